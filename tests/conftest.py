from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TINY_DATA = ["data.sample.products=300", "data.sample.buyers=200", "data.batch_size=128"]


def compose_config(root: Path, overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """The entry point's config as Hydra would compose it, rooted in a temp dir (data/, outputs/, .cache/)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name, overrides=[f"paths.root_dir={root}", *(overrides or [])], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        cfg.hydra.runtime.output_dir = str(root / "run")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the app's cfg holds no hydra node
    return cfg


@pytest.fixture
def tiny_config(tmp_path):
    def make(*overrides: str, config_name: str = "train") -> DictConfig:
        extra = TINY_DATA if config_name in ("train", "export") else []
        return compose_config(tmp_path, [*extra, *overrides], config_name)

    return make


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory) -> Path:
    """One tiny training run shared by the slow tests: <root>/run/bundle, <root>/data/sample, <root>/outputs/latest."""
    from twotower.train import train

    root = tmp_path_factory.mktemp("trained")
    cfg = compose_config(root, [*TINY_DATA, "trainer.max_epochs=2", "callbacks.embedding_projector=null"])
    train(cfg)
    return root
