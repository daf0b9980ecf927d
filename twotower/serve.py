"""python -m twotower.serve [bundle=PATH] [host=...] [port=...]: the HTTP service over a bundle (LitServe)."""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from twotower.config import validate_config
from twotower.retrieval.bundle import BundleError, load_bundle

log = logging.getLogger(__name__)


def serve(cfg: DictConfig) -> None:
    """Check the bundle, build the server and run it until interrupted."""
    from twotower.serving import api, schemas
    from twotower.serving.recommender import event_schema_of

    validate_config(cfg)
    server_settings = instantiate(cfg.server)
    recommender_settings = instantiate(cfg.recommender)
    # Fail here, with the bundle's own message, rather than in a worker process.
    bundle = load_bundle(cfg.bundle, load_index=False, verify_checksums=False)
    manifest = bundle.manifest
    schemas.configure_event_schema(event_schema_of(manifest))
    metadata = {
        k: manifest.get(k) for k in ("model_version", "created_at", "text_encoder_id", "num_products")
    }
    server = api.build_server(str(cfg.bundle), server_settings, recommender_settings, model_metadata=metadata)
    log.info("serving %s (%s) on http://%s:%s", cfg.bundle, manifest.get("model_version"), cfg.host, cfg.port)
    try:
        server.run(
            host=cfg.host,
            port=cfg.port,
            num_api_servers=server_settings.api_servers,
            generate_client_file=False,
            log_level=server_settings.log_level,
            api_server_worker_type=server_settings.api_server_worker_type,
        )
    finally:
        server.twotower_manager.shutdown()


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    try:
        serve(cfg)
    except BundleError as error:
        raise SystemExit(f"twotower.serve: {error}") from None


if __name__ == "__main__":
    main()
