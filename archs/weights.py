"""Pretrained and local weights for the timm backbones (FCN's VGG, ResUNet-34's ResNet).

Two ways to start from ImageNet weights:

* ``pretrained=True``: timm's own source (the Hugging Face hub, or the URL in timm's
  pretrained config). Works offline when the file is already in the local HF cache.
  When it is not, and ``HF_HUB_OFFLINE=1`` is set or the hub cannot be reached within a
  second, :class:`PretrainedWeightsError` is raised at once instead of timm's slow retries.
* ``weights=PATH``: a local ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict of **the
  same timm model** (``timm.create_model(name).state_dict()``, the file timm downloads, or a
  checkpoint dict holding it under ``state_dict``/``model``). Loaded through timm
  (``pretrained_cfg_overlay=dict(file=PATH)``) with strict key matching, so a file of another
  model fails loudly. This is the way for offline clusters: download once
  (``hf download timm/vgg16.tv_in1k model.safetensors --local-dir DIR``) and pass the path.

``weights`` takes precedence over ``pretrained``.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were requested but cannot be obtained."""


def hub_offline() -> bool:
    """Tell whether the Hugging Face hub is in offline mode (``HF_HUB_OFFLINE``).

    Reads the environment now (it may have changed since ``huggingface_hub`` was imported)
    and ``huggingface_hub.constants.HF_HUB_OFFLINE`` (what the hub client itself obeys).
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _reachable(url: str, timeout: float) -> bool:
    """Tell whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    DNS lookups ignore socket timeouts, so the probe runs in a daemon thread and the wait is
    bounded by ``timeout`` whatever the resolver does.
    """
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            ok.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok and ok[0])


def _hf_cached(hub_id: str, filename: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = hub_id.partition("@")
    names = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo_id, name, revision=revision or None)
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def _url_cached(url: str) -> bool:
    import torch.hub

    name = os.path.basename(urlparse(url).path)
    return bool(name) and os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", name))


def _maybe_cached(timm_name: str) -> bool:
    """Tell cheaply (no timm import) whether the weights of ``timm_name`` could be cached.

    Looks for ``models--timm--NAME[.TAG]`` snapshots in the HF cache and for any file in the
    torch hub checkpoint folder (where timm's URL-only weights go). ``False`` means
    certainly not cached; ``True`` is settled by the exact check.
    """
    if ":" in timm_name:  # "hf-hub:org/repo" style names: leave it to the exact check
        return True
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    dirs = [cache / f"models--timm--{timm_name}"]
    if "." not in timm_name:
        dirs += cache.glob(f"models--timm--{timm_name}.*")
    if any(any(d.glob("snapshots/*/*")) for d in dirs):
        return True
    import torch.hub

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.iterdir())


def _unavailable(timm_name: str, source: str, reason: str) -> PretrainedWeightsError:
    if source.startswith("http"):
        how = f"fetch {source}"
    else:
        how = f"`hf download {source} model.safetensors --local-dir DIR`"
        if source.endswith("<tag>"):
            how += f" (repo id: timm.models.get_pretrained_cfg({timm_name!r}).hf_hub_id)"
    return PretrainedWeightsError(
        f"pretrained=True needs the ImageNet weights of timm model {timm_name!r} ({source}), "
        f"which are not in the local cache, and {reason}. On a machine with internet access "
        f"run {how}, then pass weights=PATH (a state dict of timm model {timm_name!r}); "
        f"or copy the HF cache over; or use pretrained=False"
    )


def ensure_pretrained_available(timm_name: str, timeout: float = 1.0) -> None:
    """Fail fast when timm would have to download weights it cannot get.

    When nothing that could hold the weights is cached, this decides without importing timm
    (well under a second): ``HF_HUB_OFFLINE=1`` or a hub that does not answer within
    ``timeout`` seconds raises at once. Otherwise timm's pretrained config is consulted.

    Args:
        timm_name: timm model name, optionally with a pretrained tag (``"resnet34.a1_in1k"``).
        timeout: Seconds allowed for the reachability probe.

    Raises:
        PretrainedWeightsError: timm has no weights for the model, or they are not cached and
            the hub is offline (``HF_HUB_OFFLINE=1``) or unreachable.
    """
    from huggingface_hub import constants

    offline_reason = "HF_HUB_OFFLINE=1 forbids downloading"
    proxied = any(os.environ.get(v) for v in _PROXY_VARS)  # a direct probe would say nothing
    if not _maybe_cached(timm_name):
        source = f"timm/{timm_name}" if "." in timm_name else f"timm/{timm_name}.<tag>"
        if hub_offline():
            raise _unavailable(timm_name, source, offline_reason)
        if not proxied and not _reachable(constants.ENDPOINT, timeout):
            raise _unavailable(timm_name, source, f"{constants.ENDPOINT} cannot be reached")

    import timm.models

    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    if hub_id:
        if _hf_cached(hub_id, getattr(cfg, "hf_hub_filename", None)):
            return
        source, probe_url = hub_id, constants.ENDPOINT
    elif url:
        if _url_cached(url):
            return
        source, probe_url = url, url
    else:
        raise PretrainedWeightsError(
            f"timm has no pretrained weights for {timm_name!r}; use pretrained=False or "
            "weights=PATH"
        )
    if hub_offline():
        raise _unavailable(timm_name, source, offline_reason)
    if not proxied and not _reachable(probe_url, timeout):
        raise _unavailable(timm_name, source, f"{probe_url} cannot be reached")


def timm_weight_kwargs(
    timm_name: str, *, pretrained: bool, weights: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """Return the ``timm.create_model`` keyword arguments that load the requested weights.

    Args:
        timm_name: timm model name.
        pretrained: Load timm's pretrained weights (checked with
            :func:`ensure_pretrained_available`).
        weights: Local state-dict file of the same timm model; takes precedence.

    Returns:
        ``{"pretrained": bool}`` plus ``pretrained_cfg_overlay`` for a local file.

    Raises:
        FileNotFoundError: ``weights`` does not exist (the message names the path).
        ValueError: ``weights`` has an unsupported suffix.
        PretrainedWeightsError: See :func:`ensure_pretrained_available`.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file not found: {path} (expected a state dict of timm model "
                f"{timm_name!r} as {'/'.join(WEIGHT_SUFFIXES)})"
            )
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise ValueError(f"weights file {path} must end in one of {', '.join(WEIGHT_SUFFIXES)}")
        return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path.resolve())}}
    if pretrained:
        ensure_pretrained_available(timm_name)
        return {"pretrained": True}
    return {"pretrained": False}


def create_timm_model(
    timm_name: str,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm model, loading ``pretrained`` or local ``weights`` (see module docs).

    Args:
        timm_name: timm model name.
        pretrained: Load timm's pretrained weights.
        weights: Local state-dict file of the same timm model.
        **kwargs: Passed to ``timm.create_model`` (``features_only``, ``in_chans``, ...).

    Returns:
        The timm model.

    Raises:
        FileNotFoundError, ValueError, PretrainedWeightsError: See :func:`timm_weight_kwargs`.
        RuntimeError: The local file does not fit the model (the message names the path).
    """
    load = timm_weight_kwargs(timm_name, pretrained=pretrained, weights=weights)
    import timm  # after the checks above, so that they fail fast

    try:
        return timm.create_model(timm_name, **load, **kwargs)
    except Exception as err:
        if weights is None:
            raise
        raise RuntimeError(
            f"could not load weights file {weights} into timm model {timm_name!r} "
            f"(it must be a state dict of that same timm model): {err}"
        ) from err
