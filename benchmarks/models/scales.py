"""Sizes of the zoo models: `tiny` builds in seconds for tests, `full` is benchmark-sized."""

from __future__ import annotations

import dataclasses

SEQ_LEN = 100  # DIN / DIEN behaviour sequence
LONG_SEQ_LEN = 200  # user-heavy ranker's behaviour sequence
STRING_HIST_LEN = 50  # string ranker's behaviour history (item-id strings)

COUNTRIES = (
    "US", "GB", "DE", "FR", "JP", "CN", "IN", "BR", "CA", "AU",
    "ES", "IT", "MX", "KR", "NL", "SE", "PL", "TR", "ID", "ZA",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Dims:
    """Vocabulary sizes and layer widths shared by the zoo's builders."""

    users: int  # user-id vocabulary
    items: int  # item-id vocabulary, shared by candidates and behaviour sequences
    categories: int  # item-category vocabulary
    cities: int  # user-city vocabulary
    brands: int  # number of item-brand strings
    emb: int  # embedding width
    dense: int  # width of user_dense / item_dense
    mlp: tuple[int, ...]  # hidden layers of the main MLPs
    attention: tuple[int, ...]  # DIN attention-unit MLP
    gru: int  # DIEN interest-extractor state
    model_dim: int  # user-heavy encoder width
    heads: int  # user-heavy attention heads
    blocks: int  # user-heavy encoder blocks
    cross_layers: int  # DCN-v2 cross layers
    experts: int  # MMoE experts
    dlrm_emb: int  # DLRM embedding width (= bottom-MLP output)
    dlrm_users: int  # DLRM user-id vocabulary (its largest table)
    dlrm_items: int  # DLRM item-id vocabulary
    string_users: int  # string ranker's user-id strings
    string_items: int  # string ranker's item-id strings (candidates and history)


TINY = Dims(
    users=500,
    items=1000,
    categories=30,
    cities=40,
    brands=12,
    emb=8,
    dense=4,
    mlp=(32, 16),
    attention=(16, 8),
    gru=8,
    model_dim=16,
    heads=2,
    blocks=1,
    cross_layers=2,
    experts=3,
    dlrm_emb=8,
    dlrm_users=500,
    dlrm_items=1000,
    string_users=500,
    string_items=1000,
)

FULL = Dims(
    users=1_000_000,
    items=500_000,
    categories=10_000,
    cities=50_000,
    brands=2_000,
    emb=32,
    dense=16,
    mlp=(512, 256, 128),
    attention=(80, 40),
    gru=64,
    model_dim=64,
    heads=4,
    blocks=2,
    cross_layers=3,
    experts=6,
    dlrm_emb=64,
    dlrm_users=1_000_000,
    dlrm_items=600_000,
    string_users=50_000,  # vocabularies live in the graph and in the sidecar: kept modest
    string_items=50_000,
)

SCALES = {"tiny": TINY, "full": FULL}


def brand_vocab(dims: Dims) -> tuple[str, ...]:
    return tuple(f"brand_{i:05d}" for i in range(dims.brands))


def string_vocab(prefix: str, size: int) -> tuple[str, ...]:
    """The string ranker's ids: `user_000042`-style, one per row of its embedding table."""
    return tuple(f"{prefix}_{i:06d}" for i in range(size))


def dlrm_table_rows(dims: Dims) -> dict[str, int]:
    """Rows of each DLRM embedding table (row 0 is padding / out-of-vocabulary)."""
    return {
        "user_id": dims.dlrm_users,
        "user_city": dims.cities,
        "user_country": len(COUNTRIES) + 1,
        "item_id": dims.dlrm_items,
        "item_category": dims.categories,
    }
