-- Fan-out / fan-in (engine/src/steps.rs, `JobContext::fan_out`). Same logical schema as
-- ../postgres/0005_children.sql, whose comment says why a trigger wakes the parent.

ALTER TABLE jobs ADD COLUMN parent_id INTEGER;
CREATE INDEX jobs_children ON jobs (parent_id, status) WHERE parent_id IS NOT NULL;

CREATE TRIGGER jobs_wake_parent AFTER UPDATE OF status ON jobs
    WHEN NEW.parent_id IS NOT NULL
         AND NEW.status IN ('succeeded', 'failed', 'cancelled')
         AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled')
BEGIN
    UPDATE jobs SET
        wake_pending = 1,
        scheduled = CASE WHEN status = 'pending' AND run_at > NEW.finished_at THEN 0 ELSE scheduled END,
        run_at = CASE WHEN status = 'pending' AND run_at > NEW.finished_at THEN NEW.finished_at ELSE run_at END
    WHERE id = NEW.parent_id AND status IN ('pending', 'running');
END;
