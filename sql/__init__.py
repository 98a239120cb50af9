"""bgjobs's SQL, shipped as package data: queries.sql and the numbered migrations."""
