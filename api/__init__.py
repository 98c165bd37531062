"""The HTTP face of Nurture: the FastAPI app, auth, error shapes and every router."""
