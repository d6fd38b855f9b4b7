-- Fan-out / fan-in (engine/src/steps.rs, `JobContext::fan_out`). Same logical schema as
-- ../sqlite/0005_children.sql.
--
-- A child job knows its parent. The parent waits for its children holding no worker (it
-- is `pending`, due at a distant recheck), and each child that reaches a final state wakes
-- it, in the same transaction as the child's own change: the trigger below, so that no path
-- to a final state (an ack, an admin's cancel, a lease rescue that gives up) can forget it.
-- It does what `Engine::signal` does: a waiting parent is due at once; a running one is
-- marked (`wake_pending`), so that its attempt, if it ends waiting, is run again at once.
-- Every child wakes the parent (not only "the last": two siblings finishing at once in two
-- transactions would each see the other unfinished); the parent looks, and waits again
-- while any child is unfinished.
--
-- No foreign key: the pruner deletes finished jobs in any order, and a child whose parent
-- is gone simply has no one to wake.

ALTER TABLE jobs ADD COLUMN parent_id BIGINT;
CREATE INDEX jobs_children ON jobs (parent_id, status) WHERE parent_id IS NOT NULL;

-- The parent's workers in every process are told at the child's commit (the channel of
-- engine/src/wakeup.rs); on SQLite, one process, they find it at their next poll.
CREATE FUNCTION veza_jobs_wake_parent() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    parent_kind TEXT;
BEGIN
    UPDATE jobs SET
        wake_pending = 1,
        scheduled = CASE WHEN status = 'pending' AND run_at > NEW.finished_at THEN 0 ELSE scheduled END,
        run_at = CASE WHEN status = 'pending' AND run_at > NEW.finished_at THEN NEW.finished_at ELSE run_at END
    WHERE id = NEW.parent_id AND status IN ('pending', 'running')
    RETURNING kind INTO parent_kind;
    IF parent_kind IS NOT NULL THEN
        PERFORM pg_notify('veza_jobs', parent_kind);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_wake_parent AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN (NEW.parent_id IS NOT NULL
          AND NEW.status IN ('succeeded', 'failed', 'cancelled')
          AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION veza_jobs_wake_parent();
