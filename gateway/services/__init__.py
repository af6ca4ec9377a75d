"""Use cases between the routes and the engine pool: one function per job, no HTTP details."""
