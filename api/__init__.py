"""The FastAPI application: routes, schemas, auth, uploads, classify."""
