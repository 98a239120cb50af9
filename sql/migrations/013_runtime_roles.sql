-- Least privilege (issue 16): the services can run as a role that may read and write bgjobs's
-- rows and nothing else (no DDL, none of the host app's tables). One call, made by the role
-- that owns bgjobs's tables (the one that runs `bgjobs migrate`), grants it all:
--
--     SELECT * FROM bgjobs_grant_runtime('bgjobs_app');   -- or: bgjobs grant bgjobs_app
--
-- and records the role, so that `bgjobs migrate` grants it again whatever later migrations
-- add. It grants, in the schema of background_jobs: USAGE on the schema; SELECT, INSERT,
-- UPDATE, DELETE on background_jobs and the bgjobs_* tables; SELECT on the bgjobs_* views and
-- on bgjobs_migrations; USAGE on their sequences; EXECUTE on the bgjobs_* functions. Never
-- TRUNCATE, REFERENCES or TRIGGER, never anything on another table: the foreign keys to the
-- app's users(id) are checked with the rights of that table's owner, so the runtime role needs
-- no privilege on users at all. p_apply => false only returns the statements.

CREATE TABLE bgjobs_runtime_roles (
    role_name TEXT PRIMARY KEY,
    granted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
COMMENT ON TABLE bgjobs_runtime_roles IS 'Roles the services run as, given their privileges by bgjobs_grant_runtime(); bgjobs migrate grants them again after every migration. Delete a row (and REVOKE) to stop that.';

CREATE FUNCTION bgjobs_grant_runtime(p_role text, p_apply boolean DEFAULT true)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    ns oid := (SELECT relnamespace FROM pg_class WHERE oid = 'background_jobs'::regclass);
    schema_name text := (SELECT nspname FROM pg_namespace WHERE oid = ns);
    stmt text;
BEGIN
    IF to_regrole(quote_ident(p_role)) IS NULL THEN
        RAISE EXCEPTION 'no such role: %', p_role USING ERRCODE = 'undefined_object',
            HINT = 'create it first: CREATE ROLE ... LOGIN PASSWORD ...';
    END IF;
    FOR stmt IN
        SELECT format('GRANT USAGE ON SCHEMA %I TO %I', schema_name, p_role)
        UNION ALL
        SELECT * FROM (
            SELECT format(CASE
                       WHEN c.relname = 'bgjobs_migrations' THEN 'GRANT SELECT ON TABLE %I.%I TO %I'
                       WHEN c.relkind IN ('r', 'p') THEN
                           'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %I.%I TO %I'
                       WHEN c.relkind = 'S' THEN 'GRANT USAGE, SELECT ON SEQUENCE %I.%I TO %I'
                       ELSE 'GRANT SELECT ON TABLE %I.%I TO %I' END,
                   schema_name, c.relname, p_role)
            FROM pg_class c
            WHERE c.relnamespace = ns AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
              AND (c.relname = 'background_jobs' OR c.relname LIKE 'bgjobs\_%')
              AND c.relname <> 'bgjobs_runtime_roles'
            ORDER BY c.relname) AS relations
        UNION ALL
        SELECT * FROM (
            SELECT format('GRANT EXECUTE ON FUNCTION %I.%I(%s) TO %I', schema_name, p.proname,
                          pg_get_function_identity_arguments(p.oid), p_role)
            FROM pg_proc p
            WHERE p.pronamespace = ns AND p.proname LIKE 'bgjobs\_%'
              AND p.proname <> 'bgjobs_grant_runtime'
            ORDER BY p.proname, p.oid) AS functions
    LOOP
        IF p_apply THEN
            EXECUTE stmt;
        END IF;
        RETURN NEXT stmt || ';';
    END LOOP;
    IF p_apply THEN
        INSERT INTO bgjobs_runtime_roles (role_name) VALUES (p_role)
        ON CONFLICT (role_name) DO UPDATE SET granted_at = now();
    END IF;
END $$;
REVOKE EXECUTE ON FUNCTION bgjobs_grant_runtime(text, boolean) FROM PUBLIC;
COMMENT ON FUNCTION bgjobs_grant_runtime(text, boolean) IS 'Grant a role what the API, the events service and the workers need, and nothing else (run as the owner of bgjobs''s tables); returns the GRANT statements. The role is recorded in bgjobs_runtime_roles and granted again by every bgjobs migrate. p_apply => false: only return them.';
