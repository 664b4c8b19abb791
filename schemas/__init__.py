"""The pydantic contract shared by the API and the workers."""
