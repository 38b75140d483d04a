-- Run once by the postgres image on an empty volume, against POSTGRES_DB (mlflow).
-- MLflow's basic-auth keeps its users in a database of its own.
CREATE DATABASE mlflow_auth;
