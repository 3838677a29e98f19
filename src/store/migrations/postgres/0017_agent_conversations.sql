-- One conversation per agent in a session (issue #20): a session that switches agents resumes
-- each agent's own conversation, never another agent's id. Filled from the jobs that ran before.
CREATE TABLE agent_conversations (
    session_id      text COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    agent           text NOT NULL,
    conversation_id text NOT NULL,
    updated         bigint NOT NULL,
    PRIMARY KEY (session_id, agent)
);
INSERT INTO agent_conversations (session_id, agent, conversation_id, updated)
SELECT DISTINCT ON (j.session_id, j.spec::jsonb ->> 'agent')
       j.session_id, j.spec::jsonb ->> 'agent', j.conversation_id, j.created
FROM jobs j
WHERE j.conversation_id IS NOT NULL
ORDER BY j.session_id, j.spec::jsonb ->> 'agent', j.created DESC
ON CONFLICT (session_id, agent) DO NOTHING;
