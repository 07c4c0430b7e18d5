-- Whether the engine held its reorder watermark when it took the row in (the first
-- moments of a consuming session, see `Engine::hold` and `amqp.redelivery_settle_ms`).
-- Replay holds and resumes at the same rows, so a rebuilt engine releases events when
-- the original did and raises no finding the original did not.
ALTER TABLE journal ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;

-- A daemon holding its order-dependent checks has findings it has not judged yet: the
-- deploy gate counts that against coverage.
ALTER TABLE daemon_status ADD COLUMN holding BOOLEAN NOT NULL DEFAULT false;
