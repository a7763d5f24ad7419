"""Model export (LiteMedSAM -> OpenVINO IR) and the registry of models a worker can run."""
