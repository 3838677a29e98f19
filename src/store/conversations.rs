//! Each agent's own conversation in a session (#20): the SQL both backends run (its `$n`
//! placeholders are valid SQLite too). A row is written when a job ends with a conversation id,
//! and read when the session's next job of that agent starts; a rewind sets or removes it.

pub const SELECT: &str =
    "SELECT conversation_id FROM agent_conversations WHERE session_id = $1 AND agent = $2";
/// Inserts only while the session exists (a job can end after its session was deleted).
pub const UPSERT: &str = "INSERT INTO agent_conversations (session_id, agent, conversation_id, updated) \
     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $1) \
     ON CONFLICT (session_id, agent) DO UPDATE SET conversation_id = excluded.conversation_id, \
     updated = excluded.updated";
/// A rewind to before the agent's first conversation: its next job starts a new one.
pub const DELETE: &str = "DELETE FROM agent_conversations WHERE session_id = $1 AND agent = $2";
