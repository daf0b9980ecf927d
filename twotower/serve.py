"""python -m twotower.serve [bundle=PATH] [host=...] [port=...]: the HTTP service over a bundle (LitServe).

A/B variants (`variants: {control: {bundle: PATH, share: 0.9}, treatment: {...}}`, `variants_salt`) serve
several bundles side by side; a plain `bundle=` is a single control. `reranker=` picks the second stage
(conf/reranker/), `buyer_cache` the per-worker buyer-vector cache. Everything is checked here, before any
process starts, with errors that name the variant or option at fault.

Shutdown: SIGTERM or SIGINT to this (main) process stops every child - front ends, inference workers,
managers - within 10 s and frees the port. LitServe handles only KeyboardInterrupt and waits up to 30 s per
front end, and a SIGTERM killed the main process alone (its children stayed, holding the port), so the first
signal becomes a KeyboardInterrupt, later ones are ignored, and a watchdog kills whatever is left at 8 s.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower.config import ConfigError, validate_config
from twotower.retrieval.bundle import BundleError, load_bundle
from twotower.serving.buyer_cache import BuyerVectorCache
from twotower.serving.variants import VariantsConfig

log = logging.getLogger(__name__)
HARD_STOP_AFTER = 8.0  # seconds from the first signal to SIGKILL of any child still alive


def _stop_children(grace: float = 2.0) -> None:
    """Terminate every multiprocessing child still alive; kill those that ignore it for `grace` s."""
    children = multiprocessing.active_children()
    for child in children:
        with contextlib.suppress(Exception):
            child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            with contextlib.suppress(Exception):
                child.kill()
                child.join(1.0)


@contextlib.contextmanager
def _signals_to_shutdown() -> Iterator[None]:
    """While inside: the first SIGTERM/SIGINT raises KeyboardInterrupt in the main thread (LitServe's
    shutdown path), later ones are ignored, and a watchdog ends the process at HARD_STOP_AFTER."""
    main_pid = os.getpid()
    stopping = threading.Event()

    def watchdog() -> None:
        time.sleep(HARD_STOP_AFTER)
        log.error("shutdown took over %.0f s; killing what is left", HARD_STOP_AFTER)
        for child in multiprocessing.active_children():
            with contextlib.suppress(Exception):
                child.kill()
        os._exit(1)

    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:  # a forked child inherited this handler: behave as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if stopping.is_set():
            return  # a second Ctrl+C must not interrupt the cleanup (that is what left orphans)
        stopping.set()
        threading.Thread(target=watchdog, name="twotower-shutdown-watchdog", daemon=True).start()
        log.warning("received %s; shutting down", signal.Signals(signum).name)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_variants(cfg: DictConfig) -> VariantsConfig:
    """The variants to serve: `variants` when given (it wins over `bundle`, which always has a default),
    else `bundle` as a single control. Raises ConfigError naming what is wrong."""
    raw = cfg.get("variants")
    variants = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    try:
        return VariantsConfig.parse(
            variants, bundle=cfg.get("bundle"), salt=str(cfg.get("variants_salt") or "")
        )
    except ValueError as error:
        raise ConfigError(f"variants: {error}") from None


def buyer_cache_options(cfg: DictConfig) -> dict | None:
    """BuyerVectorCache options from `buyer_cache` (null = off), checked by building one."""
    raw = cfg.get("buyer_cache")
    if raw is None or raw is False:
        return None
    options = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    if not isinstance(options, dict) or set(options) - {"max_entries", "ttl_s"}:
        raise ConfigError(
            f"buyer_cache must be null or {{max_entries: N, ttl_s: SECONDS|null}}; got {options!r}"
        )
    try:
        BuyerVectorCache(**options)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return options


def serve(cfg: DictConfig) -> None:
    """Check the bundles, build the server and run it until SIGTERM/SIGINT."""
    from twotower.serving import api, schemas

    validate_config(cfg)
    server_settings = instantiate(cfg.server)
    recommender_settings = instantiate(cfg.recommender)
    variants = parse_variants(cfg)
    reranker = instantiate(cfg.reranker) if cfg.get("reranker") is not None else None
    cache = buyer_cache_options(cfg)
    # Fail here, with the bundle's own message, rather than in a worker process.
    bundles = {}
    for variant in variants:
        try:
            bundles[variant.name] = load_bundle(variant.bundle, load_index=False, verify_checksums=False)
        except BundleError as error:
            raise BundleError(f"variant {variant.name!r}: {error}") from None
    control = bundles[variants.control]
    manifest = control.manifest
    schemas.configure_event_schema(control.event_schema)
    schemas.configure_variants(variants.names)
    metadata = {
        k: manifest.get(k) for k in ("model_version", "created_at", "text_encoder_id", "num_products")
    }
    with _signals_to_shutdown():
        service = api.build_server(
            variants,
            server_settings,
            recommender_settings,
            model_metadata=metadata,
            reranker=reranker,
            buyer_cache=cache,
        )
        log.info(
            "serving %s on http://%s:%s (reranker %s, buyer cache %s)",
            {v.name: f"{v.bundle} ({bundles[v.name].version}, share {v.share})" for v in variants},
            cfg.host,
            cfg.port,
            getattr(reranker, "name", "none"),
            cache or "off",
        )
        try:
            service.run(host=cfg.host, port=cfg.port)
        except KeyboardInterrupt:
            pass  # a signal during start-up: LitServe's own shutdown did not run; the lines below clean up
        finally:
            service.close()
            _stop_children()


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    try:
        serve(cfg)
    except (BundleError, ConfigError) as error:
        raise SystemExit(f"twotower.serve: {error}") from None


if __name__ == "__main__":
    main()
