-- Fencing by lease generation (issue #23): every change of a running job's owner (a restarted
-- agentd adopting it, another replica settling it as an orphan) adds one, and each such change
-- is a compare-and-swap on the generation its writer read, so two of them never both win.
ALTER TABLE jobs ADD COLUMN lease_gen INTEGER NOT NULL DEFAULT 0;
