"""Version 5 of the stage-4 kernel ladder: the production kernel, one schedule and two tiles.

    tiles of 64+ query rows per KV head (h_q·s_q ≥ 64: DeepSeek-V3 at TP 1-2, speculative decode)
        -> the warp-specialised Gluon "seesaw" tile (v5_seesaw.py): a producer warp for the TMA copies and two
           consumer warpgroups out of lockstep, FlashMLA's schedule. The Gluon tile it grew from (v5_gluon.py:
           TMA page loads on mbarriers, async wgmma, no repeated score work, both warpgroups in lockstep) stays
           as path="gluon", for comparison;
    fewer rows (h_q = 16 or 32 at s_q = 1: TP 4-8)
        -> the register-lean plain-Triton small tile (v5_small.py), which the interpreter also runs.
Both walk v4's balanced schedule (schedule.py) and share its combine kernel. Where the Gluon tile cannot run
(no sm_90, another Triton, h_kv > 1, a cache that TMA cannot address) v4's 64-row tile runs instead;
`kernel_choice` says which runs and why. An FP8 cache (`is_fp8_kvcache=True`, FlashMLA's 656-byte rows,
mla_tutorial/fp8.py) is read on sm_90 by a Gluon FP8 tile: at up to 16 query rows per KV head the 16-row tile that
dequantizes into its operand registers, on wgmma with both products transposed (path "wgr", v5_fp8_wgr.py: the
16 rows are wgmma's N, nothing padded; its forerunners "reg" on mma.sync, "mma", "tma", "ws16" and "ksplit" stay
as paths), at more the FP8 seesaw tile (path "fp8ss",
v5_fp8_seesaw.py: the bf16 seesaw tile's consumers, fed by a producer warpgroup that copies each page's e4m3 words
into its bf16 slot and dequantizes them there); elsewhere by the small tile, which dequantizes each key chunk on load.
All keep bf16 tensor-core work after the dequantization. `path="seesaw"` with an FP8 cache forces the
warp-specialised FP8 tile that was v5's choice above 16 rows until 2026-12-03 (v5_fp8_ws.py: a dequantizing producer
partition fills the bf16 slots the lockstep tile's math reads; 3-19 % slower on the H200, docs/fp8.md §5),
`path="gluon"` the lockstep Gluon FP8 tile (v5_fp8_gluon.py: the same page work in the warps that do the math).

On a GPU the Python around the kernels runs once per argument signature: the first call leaves a call plan (plan.py)
that later calls with the same shapes, strides, dtypes and scalars replay (new outputs, new addresses, the packed
launches), so a call costs the host ~30-60 µs instead of ~120-230 on the GPU machines (docs/kernel.md §13).

A block id outside [0, num_blocks) inside a request's length is never dereferenced: the kernels skip it and
clear a per-device "ok" flag, on which `check_bounds=True` (the default) asserts on the device (no host sync; in the
combine kernel's first program since 2026-12-04, `FOLD_BOUNDS`, no launch of its own: 2.5-5 µs a call less than
torch._assert_async's kernel after it). A failing assertion surfaces at the next synchronisation as a CUDA error
("device-side assert triggered") and, as for any device-side assert, ends the process's CUDA context.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..contract import check_block_table_on_device, check_contiguous, validate_paged_decode
from .combine import BOUNDS_MESSAGE, combine_splits
from .common import D_NOPE, TileConfig, is_interpreter, validate_metadata
from .launch import recording
from .plan import is_new, make_plan, remember, replay, signature
from .schedule import get_mla_metadata
from .v4_balanced import _launch_v4
from .v5_fp8_gluon import launch_v5_fp8_gluon
from .v5_fp8_ksplit import launch_v5_fp8_ksplit
from .v5_fp8_mma import MMA_WARPS, launch_v5_fp8_mma
from .v5_fp8_reg import launch_v5_fp8_reg
from .v5_fp8_seesaw import launch_v5_fp8_seesaw
from .v5_fp8_tma import launch_v5_fp8_tma
from .v5_fp8_wgr import launch_v5_fp8_wgr
from .v5_fp8_ws import launch_v5_fp8_ws
from .v5_fp8_ws16 import PRODUCER_WARPS, launch_v5_fp8_ws16
from .v5_gluon import BLOCK_M as GLUON_BLOCK_M
from .v5_gluon import GluonConfig, gluon_unavailable, launch_v5_gluon
from .v5_m16 import launch_v5_m16
from .v5_seesaw import launch_v5_seesaw
from .v5_small import launch_v5_small, small_tile_config

#: The 16-row FP8 tiles (an FP8 cache only): "mma" (v5_fp8_mma.py), "tma" the same fed by TMA (v5_fp8_tma.py), "ws16"
#: warp-specialised (v5_fp8_ws16.py), "reg" dequantizing into the operand registers (v5_fp8_reg.py, v5's choice at up
#: to FP8_REG_MAX_ROWS rows until 2026-12-03), "ksplit" the same with the warps splitting S's reduction
#: (v5_fp8_ksplit.py), "wgr" the same with both products transposed on wgmma (v5_fp8_wgr.py, v5's choice at up to
#: FP8_REG_MAX_ROWS rows); the others are forced only. Their timing modes
#: (GluonConfig.mode): up to 4 for "mma", 3 for "wgr" (no dequantization), none for the others.
FP8_16ROW_PATHS = {"mma": 4, "tma": 0, "ws16": 0, "reg": 0, "ksplit": 0, "wgr": 0}
#: "m16": the TMA-fed 16-row tile on a bf16 cache (v5_m16.py; forced only, its variant v5_m16.M16_DEFAULT)
#: FP8-only tiles of 64 rows: "fp8ss", the bf16 seesaw tile's consumers fed by a dequantizing producer
#: (v5_fp8_seesaw.py)
FP8_ONLY_PATHS = (*FP8_16ROW_PATHS, "fp8ss")
GLUON_PATHS = ("seesaw", "gluon", "m16", *FP8_ONLY_PATHS)  # the Gluon tiles (sm_90, Triton 3.6)
FP8_PATHS = ("small", "seesaw", "gluon", *FP8_ONLY_PATHS)  # the tiles that read an FP8 cache
PATHS = ("seesaw", "gluon", "small", "v4", "m16", *FP8_ONLY_PATHS)
#: The GluonConfig.modes (a part alone; 0 the tile) each tile has, else 0-2: the 16-row tiles up to their entry in
#: FP8_16ROW_PATHS, "m16" none, the FP8 seesaw 2 (its consumers alone), 3 (no dequantization), 4 (a quarter of it)
_MODES = {**{p: tuple(range(top + 1)) for p, top in FP8_16ROW_PATHS.items()}, "m16": (0,), "fp8ss": (0, 2, 3, 4),
          "wgr": (0, 3)}


def on_gpu(q) -> bool:
    """True for a CUDA tensor: its bounds are checked inside the v5 kernels, not by the validator's extra launches."""
    return isinstance(q, torch.Tensor) and q.device.type == "cuda"


#: Tiles of at most this many query rows per KV head run the plain-Triton small tile even where the Gluon tile can
#: run: on the H200 (2026-12-01, b = 128, s_k = 4096) the small tile took 0.187 ms at 16 rows against 0.246 for the
#: Gluon tile, and the two were equal at 32 rows (0.240), where the Gluon tile was faster at s_k = 1024
#: (0.096 against 0.108 ms). docs/results/probes/v5_probe3_h200_2026-12-01.json.
SMALL_TILE_MAX_ROWS = 16

#: An FP8 cache with at least this many query rows per KV head is read by the Gluon FP8 tile (v5_fp8_gluon.py) where
#: it can run, fewer by the small tile. On the H200 (2026-12-02, b = 128) the Gluon FP8 tile was faster at every
#: shape measured: 16 rows 0.343 against 0.368 ms (s_k 4096), 0.591 against 0.635 (8192); 64 rows 0.313 against
#: 0.611; 128 rows 0.560 against 1.114 (docs/results/probes/fp8_gluon_probe1_h200_2026-12-02.json). Below 16 rows
#: it is not measured: the small tile stays.
FP8_GLUON_MIN_ROWS = 16


#: An FP8 cache with at most this many query rows per KV head is read by the 16-row FP8 tile that dequantizes into its
#: operand registers, on wgmma (v5_fp8_wgr.py) where the Gluon tiles run: on the H200 (2026-12-03, b = 128, h_q 16, s_k
#: 4096) 0.128 ms against 0.135 on mma.sync (v5_fp8_reg.py), 0.143 against 0.145 at ~N(4096, 2048) lengths
#: (docs/results/probes/fp8_wgr_h200_2026-12-03.json). Before, the mma.sync register tile: on the H200 (2026-12-02, b =
#: 128, h_q = 16, s_k 4096) it took 0.201 ms (0.154 after the eighth and ninth sessions' changes;
#: docs/results/fp8_bench_tma_h200_2026-12-02.json) against 0.248 for the 16-row tile with a bf16 page in shared memory
#: (v5_fp8_mma.py, routed here before: 0.257 against 0.322 for the warp-specialised FP8 tile, 0.440 against 0.554 at s_k
#: 8192, 0.119 against 0.132 at 1024; docs/results/fp8_bench_mma_h200_2026-12-02.json), 0.205 against 0.251 at ~N(4096,
#: 2048) lengths (docs/results/probes/fp8_reg_h200_2026-12-02.json); at 64 and 128 rows the 16-row tiles run 4 and 8
#: programs per page, each dequantizing it again (v5_fp8_mma.py: 0.813 and 1.500 ms against 0.297 and 0.506). Between 17
#: and 63 rows the 64-row FP8 tile runs (the FP8 seesaw since 2026-12-03, the warp-specialised tile before: at 64 and
#: 128 rows the FP8 seesaw was 3-19 % faster, docs/results/probes/fp8_seesaw_tps4_*). At 32 rows (TP 4) the FP8 seesaw
#: took 0.212 ms, the register tile 0.216, the warp-specialised tile 0.243 (probes/fp8_bench_h32_*); at 20, 24 and 48
#: rows the FP8 seesaw 0.214 ms each, the register tile 0.226, 0.226 and 0.412 (probes/fp8_bench_rows_*).
FP8_REG_MAX_ROWS = 16


def kernel_choice(q: torch.Tensor, k_cache: torch.Tensor, rows_per_kv: int, h_kv: int) -> tuple[str, str]:
    """(path, reason): which tile v5 runs for these inputs here, "seesaw", "fp8ss", "wgr", "small" or "v4", and
    why."""
    if k_cache.dtype == torch.float8_e4m3fn:
        why = gluon_unavailable(q, k_cache, h_kv)
        if why is None and rows_per_kv <= FP8_REG_MAX_ROWS:
            return "wgr", (f"FP8 cache (656-byte rows), {rows_per_kv} query rows per KV head on sm_90 (<= "
                           f"{FP8_REG_MAX_ROWS}): the 16-row Gluon FP8 tile dequantizing into registers, on wgmma "
                           f"(both products transposed, S^T = K·Q^T and O^T = V^T·P^T, the dequantized page wgmma's "
                           f"register operand: no bf16 page in shared memory, no row padded)")
        if why is None and rows_per_kv >= FP8_GLUON_MIN_ROWS:
            return "fp8ss", (f"FP8 cache (656-byte rows), {rows_per_kv} query rows per KV head on sm_90: the FP8 "
                             f"seesaw tile (the bf16 seesaw tile's two consumer warpgroups, fed by a producer "
                             f"warpgroup that copies each page's e4m3 words into its bf16 slot and dequantizes them "
                             f"there)")
        reason = why or f"fewer than {FP8_GLUON_MIN_ROWS} query rows per KV head"
        return "small", (f"FP8 cache (656-byte rows), {rows_per_kv} query rows per KV head: the plain-Triton small "
                         f"tile, dequantizing each key chunk on load ({reason})")
    if rows_per_kv <= SMALL_TILE_MAX_ROWS:
        return "small", (f"{rows_per_kv} query rows per KV head (<= {SMALL_TILE_MAX_ROWS}): the register-lean "
                         f"plain-Triton small tile, the faster one measured there")
    why = gluon_unavailable(q, k_cache, h_kv)
    if why is None:
        return "seesaw", (f"{rows_per_kv} query rows per KV head on sm_90: the warp-specialised Gluon seesaw tile "
                          f"(producer warp, TMA, async wgmma)")
    if rows_per_kv < GLUON_BLOCK_M:
        return "small", f"{rows_per_kv} query rows per KV head and {why}: the plain-Triton small tile"
    return "v4", f"{rows_per_kv} query rows per KV head, but {why}: v4's plain-Triton 64-row tile"


_OK_FLAGS: dict[torch.device, torch.Tensor] = {}


def ok_flag(device: torch.device) -> torch.Tensor:
    """The per-device int32 [1] flag (1 = no bad block id seen) that the v5 kernels clear on a bad id."""
    flag = _OK_FLAGS.get(device)
    if flag is None:
        flag = _OK_FLAGS[device] = torch.ones(1, dtype=torch.int32, device=device)
    return flag


#: compiled calls assert the bounds flag in the combine kernel (combine.py's CHECK: two kernels a call); False:
#: torch._assert_async after the combine, a third kernel (the calls until 2026-12-04; a timing knob)
FOLD_BOUNDS = True

#: the tiles whose launch code (`_launch_tile`) issues nothing but FastLauncher launches: a call plan can replay
#: them (plan.py). v4's path also launches the contract's bounds check, written in torch.
PLANNED_PATHS = frozenset(PATHS) - {"v4"}


def _outputs(dims, q, meta):
    """out, lse and the split partials part_out, part_lse: the partials in one allocation (part_out's values, then
    part_lse's), as a call plan makes them (plan.CallPlan.run)."""
    b, s_q, h_q, dev = dims.batch, dims.s_q, dims.h_q, q.device
    out = torch.empty(b, s_q, h_q, D_NOPE, dtype=q.dtype, device=dev)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=dev)
    slots, rows = b + meta.shape[0], s_q * h_q  # at most b + parts - 1 pieces: no sync needed to size the partials
    part = torch.empty(slots * rows * (D_NOPE + 1), dtype=torch.float32, device=dev)
    part_out = part[:slots * rows * D_NOPE].view(slots, rows, D_NOPE)  # [slots, s_q·h_q, 512]
    part_lse = part[slots * rows * D_NOPE:].view(slots, rows)  # [slots, s_q·h_q]
    return out, lse, part_out, part_lse


def _launch_v5(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, *, check_bounds=True,
               path=None, config: TileConfig | GluonConfig | None = None, error_flag: torch.Tensor | None = None,
               is_fp8: bool = False, plan_key: tuple | None = None, built_for: dict | None = None):
    """The full path of a v5 call after validation: route, check a forced tile, allocate, launch the tile and the
    combine (which asserts the bounds flag, FOLD_BOUNDS; else torch._assert_async after it). With `plan_key`
    (plan.signature of the call) it also records the launches and leaves a call plan that later calls with that
    signature replay (plan.py)."""
    forced = path  # kernel_choice picks a tile only where it runs: a forced one is checked below
    path = path or kernel_choice(q, k_cache, dims.rows_per_kv, dims.h_kv)[0]
    if is_fp8 and path not in FP8_PATHS:
        raise ValueError(f"path {path!r} cannot read an FP8 cache (is_fp8_kvcache=True): only 'small', 'gluon', "
                         f"'seesaw' (the warp-specialised FP8 tile), 'mma' (the 16-row FP8 tile), 'tma' (the same "
                         f"fed by TMA), 'ws16' (the same warp-specialised), 'reg' (the same dequantizing into "
                         f"registers), 'ksplit' (that with the warps splitting the reduction), 'wgr' (that on wgmma, "
                         f"transposed) and 'fp8ss' (the seesaw tile's consumers fed by a dequantizing producer) can")
    if path in FP8_ONLY_PATHS and not is_fp8:
        kind = "the FP8 seesaw tile" if path == "fp8ss" else "a 16-row FP8 tile"
        raise ValueError(f"path {path!r} ({kind}) reads only an FP8 cache (is_fp8_kvcache=True)")
    mode = int(getattr(config, "mode", 0))  # GluonConfig's: a part of the tile alone, for timing
    modes = _MODES.get(path, (0, 1, 2))
    if mode not in modes:
        raise ValueError(f"GluonConfig.mode {mode} (a part alone) is not a mode of path {path!r}: its modes are "
                         f"{modes} (3 and 4: the 16-row FP8 tile's, path 'mma', and the FP8 seesaw tile's, 'fp8ss'; "
                         f"3: the wgmma register tile's, 'wgr'; the other 16-row tiles have none)")
    if forced in GLUON_PATHS:  # a forced Gluon tile where it cannot run: say why, first
        why = gluon_unavailable(q, k_cache, dims.h_kv)
        if why is not None:
            raise ValueError(f"path {path!r} cannot run these inputs here: {why}")
    if path == "v4":  # v4's kernel does not check its block ids: the contract's device-side check does, on a GPU
        if check_bounds and on_gpu(q):
            check_block_table_on_device(block_table, cache_seqlens, dims.num_blocks, dims.page_size)
        return _launch_v4(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, config)
    out, lse, part_out, part_lse = _outputs(dims, q, meta)
    flag = ok_flag(q.device) if error_flag is None else error_flag
    interpreted = is_interpreter()
    planned = is_new(plan_key) and path in PLANNED_PATHS and not interpreted
    assert_bounds = check_bounds and error_flag is None
    in_combine = assert_bounds and FOLD_BOUNDS and not interpreted  # the combine asserts the flag: no third launch
    with recording() if planned else nullcontext() as records:
        _launch_tile(path, q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse,
                     part_out, part_lse, flag, config, mode, is_fp8)
        combine_splits(part_out, part_lse, num_splits, out, lse, check_flag=flag if in_combine else None)
    assert_bounds &= not in_combine
    if planned:
        remember(plan_key, make_plan(records, (q, k_cache, block_table, cache_seqlens, meta, num_splits, out, lse,
                                               part_out, part_lse, flag), error_flag is not None, assert_bounds,
                                     built_for))
    if assert_bounds:
        torch._assert_async(flag, BOUNDS_MESSAGE)
    return out, lse


def _launch_tile(path, q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                 part_lse, flag, config, mode, is_fp8):
    """Launch tile `path` over the schedule (FastLauncher launches only: a call plan replays what this issues)."""
    if path == "m16":
        launch_v5_m16(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                      part_lse, flag)
    elif path == "wgr":
        launch_v5_fp8_wgr(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                          part_lse, flag, mode=mode)
    elif path == "ksplit":
        launch_v5_fp8_ksplit(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse,
                             part_out, part_lse, flag)
    elif path == "reg":
        launch_v5_fp8_reg(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                          part_lse, flag)
    elif path == "ws16":
        launch_v5_fp8_ws16(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                           part_lse, flag, producer_warps=int(getattr(config, "warps", 0)) or PRODUCER_WARPS)
    elif path == "tma":
        launch_v5_fp8_tma(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                          part_lse, flag)
    elif path == "mma":
        launch_v5_fp8_mma(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                          part_lse, flag, mode=mode, warps=int(getattr(config, "warps", 0)) or MMA_WARPS)
    elif path == "fp8ss":
        launch_v5_fp8_seesaw(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse,
                             part_out, part_lse, flag, config if isinstance(config, GluonConfig) else None)
    elif path == "seesaw" and is_fp8:
        launch_v5_fp8_ws(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                         part_lse, flag, mode=mode)
    elif path == "seesaw":
        launch_v5_seesaw(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse,
                         part_out, part_lse, flag, config if isinstance(config, GluonConfig) else None)
    elif path == "gluon" and is_fp8:
        launch_v5_fp8_gluon(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse,
                            part_out, part_lse, flag)
    elif path == "gluon":
        launch_v5_gluon(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse,
                        part_out, part_lse, flag, config)
    else:
        cfg = config or small_tile_config(dims.rows_per_kv, q.device, is_fp8)
        launch_v5_small(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse,
                        part_out, part_lse, flag, cfg, is_fp8=is_fp8)


def mla_decode_v5(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = D_NOPE,
    softmax_scale: float | None = None,
    causal: bool = False,
    *,
    tile_scheduler_metadata: torch.Tensor | None = None,
    num_splits: torch.Tensor | None = None,
    check_bounds: bool = True,
    path: str | None = None,
    config: TileConfig | GluonConfig | None = None,
    error_flag: torch.Tensor | None = None,
    is_fp8_kvcache: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode, version 5. Computes the metadata if not given.

    `path` forces a tile (tests, tuning), `config` its launch configuration (a TileConfig for "small" and "v4", a
    GluonConfig for "gluon"). `error_flag` (int32 [1], set to 1 by the caller) is cleared by the kernel on a bad
    block id, instead of the device-side assertion: for callers that want to read it themselves.
    `is_fp8_kvcache`: k_cache is FlashMLA's FP8 cache, float8_e4m3fn [num_blocks, 64, h_kv, 656] (from
    `mla_tutorial.quantize_k_cache`), q bf16; the small tile, the 16-row register FP8 tile on wgmma (path "wgr") or
    the FP8 seesaw tile (path "fp8ss") reads it (kernel_choice), or a forced one (FP8_PATHS).
    """
    key = None
    if tile_scheduler_metadata is not None:  # (a call that builds its own schedule is never planned)
        tensors = (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits)
        key = signature((*tensors, error_flag), (head_dim_v, softmax_scale, causal, check_bounds, path, config,
                                                 is_fp8_kvcache, False))
        result = replay(key, tensors, error_flag)  # this call's shape was validated and launched before
        if result is not None:
            return result
    # on a GPU the kernels check bounds themselves (no extra launches); on the CPU the contract checks on the host
    dims = validate_paged_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                 kernel=True, check_values=not on_gpu(q), fp8_cache=is_fp8_kvcache)
    if (tile_scheduler_metadata is None) != (num_splits is None):
        raise ValueError("tile_scheduler_metadata and num_splits must be given together (from get_mla_metadata)")
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {PATHS} or None, got {path!r}")
    if tile_scheduler_metadata is None:
        tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, dims.rows_per_kv, dims.h_kv)
    validate_metadata(tile_scheduler_metadata, num_splits, dims.batch, q.device)
    check_contiguous("tile_scheduler_metadata", tile_scheduler_metadata)
    check_contiguous("num_splits", num_splits)
    return _launch_v5(q, k_cache, block_table, cache_seqlens, dims, causal, tile_scheduler_metadata, num_splits,
                      check_bounds=check_bounds, path=path, config=config, error_flag=error_flag,
                      is_fp8=is_fp8_kvcache, plan_key=key)
