-- Run once by the postgres image on an empty volume (deploy/compose.yaml).
CREATE DATABASE assayer;
