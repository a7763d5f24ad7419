"""The gateway's routes, one APIRouter per resource: jobs, audit, the service itself (health, metrics), pages."""
