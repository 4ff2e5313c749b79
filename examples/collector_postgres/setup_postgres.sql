-- One role and one database for the collector. Run as a PostgreSQL superuser:
--   sudo -u postgres psql -v password="'change-me'" -f setup_postgres.sql
-- The collector creates and migrates its own tables on start-up; it needs no other grants.
CREATE ROLE metering LOGIN PASSWORD :password;
CREATE DATABASE metering OWNER metering;
