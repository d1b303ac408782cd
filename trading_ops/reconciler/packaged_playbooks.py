"""The playbooks shipped in the package (reconciler/playbooks/), by the name `reconciler.playbook` and the
`--playbook` options may give instead of a file path."""

# default (the paper bot under systemd) and docker (the docker compose stack: restarts through the Engine API).
PACKAGED_PLAYBOOKS = {"default": "default.yml", "docker": "docker.yml"}
DEFAULT_PLAYBOOK = "default"
