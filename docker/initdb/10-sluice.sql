-- Runs once, when the compose PostgreSQL volume is first initialised.
-- A demo table and the least-privilege role Sluice connects as
-- (docs/operations.md explains each grant).
CREATE TABLE IF NOT EXISTS public.products (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    price_cents bigint,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE ROLE sluice WITH LOGIN REPLICATION PASSWORD 'sluice-demo-password';
GRANT USAGE ON SCHEMA public TO sluice;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO sluice;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO sluice;
-- The table owner creates the publication, so Sluice needs no ownership.
CREATE PUBLICATION sluice FOR TABLE public.products;
