-- Rewind holds (issue #18): while a RewindSession swaps a session's workspace, the session is held
-- until this time (µs since the epoch) and admits no job; NULL when no rewind holds it. A hold left
-- by a crash lapses by itself.
ALTER TABLE sessions ADD COLUMN rewinding_until INTEGER;
