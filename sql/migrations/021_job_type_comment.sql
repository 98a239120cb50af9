-- The seed's market types left the library (issue 15): the column's comment names the built-in
-- types, and says a host's own are welcome.
COMMENT ON COLUMN background_jobs.job_type IS 'Which registered task runs the job: a built-in (demo, noop) or one of the host app''s own.';
