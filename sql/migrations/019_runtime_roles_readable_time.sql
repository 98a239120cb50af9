-- bgjobs_runtime_roles (013) was written beside 012's checks: its one time column takes only
-- what every reader can represent, as every other bgjobs time column does (docs/dba.md).
ALTER TABLE bgjobs_runtime_roles ADD CONSTRAINT
    bgjobs_runtime_roles_granted_at_between_0001_01_02_and_9999_12_30
    CHECK (granted_at >= '0001-01-02 00:00:00+00' AND granted_at < '9999-12-31 00:00:00+00');
