"""Generate examples/scoring/candidates.csv: 2,000 synthetic candidate profiles, deterministically
(seeded; no download), for the example scoring job `candidates.yaml`.

    .venv/bin/python examples/scoring/make_candidates.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

FIRST = [
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elif",
    "Farah",
    "Goran",
    "Hana",
    "Ivo",
    "Jun",
    "Kemi",
    "Luis",
    "Mira",
    "Noor",
    "Omar",
    "Priya",
]
LAST = ["Okafor", "Silva", "Novak", "Tanaka", "Haddad", "Larsen", "Moreau", "Kowalski", "Reyes", "Fischer", "Osei", "Park"]
SKILLS = ["python", "sql", "spark", "dbt", "airflow", "kubernetes", "pytorch", "statistics", "go", "java", "tableau", "excel"]
TITLES = ["data analyst", "data engineer", "ml engineer", "backend engineer", "bi developer", "research scientist", "sre"]
CITIES = ["Lisbon", "Berlin", "Lagos", "Toronto", "Pune", "Austin", "Seoul", "remote"]


OUT = Path(__file__).with_name("candidates.csv")


def main(n: int = 2000, seed: int = 7, out: Path = OUT) -> Path:
    """Write ``n`` profiles to ``out`` (same seed, same file)."""
    rng = random.Random(seed)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "name", "title", "years", "skills", "city"])
        for i in range(n):
            skills = ", ".join(rng.sample(SKILLS, rng.randint(2, 5)))
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            writer.writerow([f"cand-{i:05d}", name, rng.choice(TITLES), rng.randint(0, 25), skills, rng.choice(CITIES)])
    return out


if __name__ == "__main__":
    print(main())
