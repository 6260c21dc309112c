-- Schema, roles and publication of the pipeline's PostgreSQL database.
--
-- Run by psql as a superuser, connected to the database that will hold the data. The official postgres
-- image runs it from /docker-entrypoint-initdb.d inside POSTGRES_DB, which it has already created; the
-- native stack runs it the same way. It is idempotent, so running it again is harmless.
--
-- Passwords come from the environment (psql 15+ \getenv), never from this file:
--   PRODUCER_PASSWORD  for the producer role (writes market data)
--   DEBEZIUM_PASSWORD  for the debezium role (logical replication)

\set ON_ERROR_STOP on
\getenv producer_password PRODUCER_PASSWORD
\getenv debezium_password DEBEZIUM_PASSWORD

\if :{?producer_password}
\else
  \warn 'init-db.sql: set PRODUCER_PASSWORD in the environment of psql'
  SELECT 1 / 0 AS producer_password_missing;
\endif
\if :{?debezium_password}
\else
  \warn 'init-db.sql: set DEBEZIUM_PASSWORD in the environment of psql'
  SELECT 1 / 0 AS debezium_password_missing;
\endif

-- An empty variable passes the checks above but would leave a role without a usable password.
SELECT :'producer_password' = '' AS producer_password_empty,
       :'debezium_password' = '' AS debezium_password_empty \gset
\if :producer_password_empty
  \warn 'init-db.sql: PRODUCER_PASSWORD is empty'
  SELECT 1 / 0 AS producer_password_empty;
\endif
\if :debezium_password_empty
  \warn 'init-db.sql: DEBEZIUM_PASSWORD is empty'
  SELECT 1 / 0 AS debezium_password_empty;
\endif

SET client_min_messages = warning;

-- Prices and quantities are exact decimals: numeric(38,18) holds 24-hour volumes far above 10^12 and
-- prices far below 10^-8. Times are timestamptz, in UTC.

-- Latest price per symbol: upserted, so the table holds one row per symbol.
CREATE TABLE IF NOT EXISTS latest_prices (
    symbol      text            NOT NULL PRIMARY KEY,
    price       numeric(38, 18) NOT NULL,
    updated_at  timestamptz     NOT NULL
);

-- Order book snapshots, one row per level. A snapshot is identified by Binance's lastUpdateId, so
-- fetching an unchanged book twice inserts nothing. The producer deletes snapshots older than
-- producer.orderbook_retention_seconds.
CREATE TABLE IF NOT EXISTS order_book_levels (
    symbol          text            NOT NULL,
    last_update_id  bigint          NOT NULL,
    side            text            NOT NULL CHECK (side IN ('bid', 'ask')),
    level           smallint        NOT NULL CHECK (level >= 0),
    price           numeric(38, 18) NOT NULL,
    quantity        numeric(38, 18) NOT NULL,
    snapshot_time   timestamptz     NOT NULL,
    PRIMARY KEY (symbol, last_update_id, side, level)
);
CREATE INDEX IF NOT EXISTS order_book_levels_snapshot_time ON order_book_levels (snapshot_time);

-- Trades are immutable: inserted once, keyed by Binance's trade id.
CREATE TABLE IF NOT EXISTS trades (
    symbol          text            NOT NULL,
    trade_id        bigint          NOT NULL,
    price           numeric(38, 18) NOT NULL,
    quantity        numeric(38, 18) NOT NULL,
    quote_quantity  numeric(38, 18) NOT NULL,
    trade_time      timestamptz     NOT NULL,
    is_buyer_maker  boolean         NOT NULL,
    is_best_match   boolean,
    PRIMARY KEY (symbol, trade_id)
);

-- Klines are identified by their open time; the still-open kline is updated until it closes.
CREATE TABLE IF NOT EXISTS klines (
    symbol                  text            NOT NULL,
    interval                text            NOT NULL,
    open_time               timestamptz     NOT NULL,
    close_time              timestamptz     NOT NULL,
    open_price              numeric(38, 18) NOT NULL,
    high_price              numeric(38, 18) NOT NULL,
    low_price               numeric(38, 18) NOT NULL,
    close_price             numeric(38, 18) NOT NULL,
    volume                  numeric(38, 18) NOT NULL,
    quote_volume            numeric(38, 18) NOT NULL,
    trade_count             bigint          NOT NULL,
    taker_buy_base_volume   numeric(38, 18) NOT NULL,
    taker_buy_quote_volume  numeric(38, 18) NOT NULL,
    PRIMARY KEY (symbol, interval, open_time)
);

-- 24-hour rolling statistics per symbol: upserted.
CREATE TABLE IF NOT EXISTS ticker_24hr (
    symbol                text            NOT NULL PRIMARY KEY,
    price_change          numeric(38, 18) NOT NULL,
    price_change_percent  numeric(38, 18) NOT NULL,
    weighted_avg_price    numeric(38, 18) NOT NULL,
    prev_close_price      numeric(38, 18) NOT NULL,
    last_price            numeric(38, 18) NOT NULL,
    last_quantity         numeric(38, 18) NOT NULL,
    bid_price             numeric(38, 18) NOT NULL,
    bid_quantity          numeric(38, 18) NOT NULL,
    ask_price             numeric(38, 18) NOT NULL,
    ask_quantity          numeric(38, 18) NOT NULL,
    open_price            numeric(38, 18) NOT NULL,
    high_price            numeric(38, 18) NOT NULL,
    low_price             numeric(38, 18) NOT NULL,
    volume                numeric(38, 18) NOT NULL,
    quote_volume          numeric(38, 18) NOT NULL,
    open_time             timestamptz     NOT NULL,
    close_time            timestamptz     NOT NULL,
    first_trade_id        bigint          NOT NULL,
    last_trade_id         bigint          NOT NULL,
    trade_count           bigint          NOT NULL
);

-- Debezium's heartbeat.action.query writes here, so an idle database still moves the slot forward and
-- WAL cannot pile up behind it.
CREATE TABLE IF NOT EXISTS debezium_heartbeat (
    id       integer     NOT NULL PRIMARY KEY,
    beat_at  timestamptz NOT NULL
);

-- Cassandra partitions trades and order book levels by day, and a delete must name its partition:
-- these tables log the whole old row on delete so the consumer can find it.
ALTER TABLE order_book_levels REPLICA IDENTITY FULL;
ALTER TABLE trades REPLICA IDENTITY FULL;

-- numeric accepts NaN, which Debezium cannot encode as a decimal: one NaN row stops the connector.
-- Binance never sends NaN and the producer rejects it; these checks stop any other writer too (NOT VALID:
-- rows already stored are not re-checked, so the script still runs on an existing database).
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.table_name, c.column_name
        FROM information_schema.columns c
        WHERE c.table_schema = 'public' AND c.data_type = 'numeric'
          AND c.table_name IN ('latest_prices', 'order_book_levels', 'trades', 'klines', 'ticker_24hr')
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conname = col.table_name || '_' || col.column_name || '_not_nan') THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I <> ''NaN'') NOT VALID', col.table_name,
                           col.table_name || '_' || col.column_name || '_not_nan', col.column_name);
        END IF;
    END LOOP;
END
$$;

-- Roles -----------------------------------------------------------------------------------------------

SELECT format('CREATE ROLE producer LOGIN PASSWORD %L', :'producer_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'producer') \gexec
SELECT format('ALTER ROLE producer WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD %L',
              :'producer_password') \gexec

SELECT format('CREATE ROLE debezium LOGIN REPLICATION PASSWORD %L', :'debezium_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'debezium') \gexec
SELECT format('ALTER ROLE debezium WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'debezium_password') \gexec

SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO producer', current_database()) \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO debezium', current_database()) \gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO producer, debezium;

-- The producer gets what its loads need and nothing more.
GRANT SELECT, INSERT, UPDATE ON latest_prices, klines, ticker_24hr TO producer;
GRANT SELECT, INSERT ON trades TO producer;
GRANT SELECT, INSERT, DELETE ON order_book_levels TO producer;

-- Debezium reads exactly the captured tables (the snapshot) and writes only its heartbeat.
GRANT SELECT ON latest_prices, order_book_levels, trades, klines, ticker_24hr TO debezium;
GRANT SELECT, INSERT, UPDATE ON debezium_heartbeat TO debezium;

-- The publication Debezium's pgoutput plugin reads; the connector is configured not to create its own.
SELECT 'CREATE PUBLICATION debezium_binance FOR TABLE latest_prices, order_book_levels, trades, klines, '
       'ticker_24hr, debezium_heartbeat'
WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'debezium_binance') \gexec
