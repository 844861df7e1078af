-- Runs once, when the compose PostgreSQL volume is first initialised.
-- The least-privilege role Sluice connects as, for the demo shop schema
-- (00-demo-schema.sql, mounted from scripts/demo-schema.sql)
-- (docs/operations.md explains each grant).
CREATE ROLE sluice WITH LOGIN REPLICATION PASSWORD 'sluice-demo-password';
GRANT USAGE ON SCHEMA public TO sluice;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO sluice;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO sluice;
-- The table owner creates the publication, so Sluice needs no ownership.
-- It must match what mappings/ need (`sluice check` prints the statement).
CREATE PUBLICATION sluice FOR TABLE public.customers, public.products,
    public.orders WHERE (status <> 'draft'), public.order_items
    WITH (publish_via_partition_root = true);
