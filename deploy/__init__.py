"""Deployment: the service table (ports, images, commands), the files generated from it
(docker-compose.yml, deploy/k8s), the gRPC health check the images run, and the Triton
model repository with its client."""
