-- One conversation per agent in a session (issue #20): a session that switches agents resumes
-- each agent's own conversation, never another agent's id. Filled from the jobs that ran before.
CREATE TABLE agent_conversations (
    session_id      TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    agent           TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    updated         INTEGER NOT NULL,
    PRIMARY KEY (session_id, agent)
);
INSERT INTO agent_conversations (session_id, agent, conversation_id, updated)
SELECT j.session_id, json_extract(j.spec, '$.agent'), j.conversation_id, j.created
FROM jobs j
WHERE j.conversation_id IS NOT NULL
  AND j.created = (SELECT max(k.created) FROM jobs k
                   WHERE k.session_id = j.session_id AND k.conversation_id IS NOT NULL
                     AND json_extract(k.spec, '$.agent') = json_extract(j.spec, '$.agent'))
ON CONFLICT (session_id, agent) DO NOTHING;
