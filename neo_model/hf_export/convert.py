"""``neo export``: any neo checkpoint as a complete Hugging Face folder.

Two kinds of source:

* an export (``config.json`` + safetensors in the released layout: a stage's
  ``<train.output>/export``, an older neo export without the Hugging Face extras, or released
  NEO weights): its weights are written again, with every extra of :func:`write_hf_extras`;
* a training-state checkpoint (``<train.output>/checkpoints/step-XXXXXXXX/``: DCP shards +
  ``trainer_state.json``): the model state is read from it (no optimizer state), on one
  process; the model's config comes from the run's manifest (``train.init``, as the trainer
  builds it) and the pixel budget from its resolved ``pack:`` section.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from neo_data.encoding.tokens import BUILTIN
from neo_data.manifest import Manifest
from neo_model.config import NeoConfig
from neo_model.hf_export import write_hf_extras
from neo_model.model import NeoChatModel
from neo_model.train.checkpoint import TRAINER_STATE, local_dir, put_dir
from neo_model.train.stages import stage_config
from neo_model.weights import CONFIG_NAME, from_pretrained, save_pretrained


class ExportError(ValueError):
    """A source that cannot be exported (the message names it and says why)."""


def read_train_state(checkpoint: Path, manifest: Manifest) -> NeoChatModel:
    """The model weights of a DCP training checkpoint, in a plain fp32 model of the config the
    run's manifest gives (``train.init``), with the pixel budget of its ``pack:`` section."""
    import torch.distributed.checkpoint as dcp

    if manifest.train is None:
        raise ExportError(f"manifest {manifest.name!r} has no train: section")
    pack = manifest.resolved_pack()
    config = stage_config(manifest.train).replace(
        min_pixels=pack.min_pixels, max_pixels=pack.max_pixels
    )
    with torch.device("meta"):
        model = NeoChatModel(config)
    model = model.to_empty(device="cpu")
    model.language_model.tie_weights()
    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():  # one process on purpose: DCP's no-process-group note
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(checkpoint))
    except (RuntimeError, ValueError, KeyError) as e:  # DCP's CheckpointException is a RuntimeError
        raise ExportError(
            f"checkpoint {checkpoint}: its model state does not fit the model of manifest "
            f"{manifest.name!r} ({type(e).__name__}: {str(e)[:500]})"
        ) from e
    model.load_state_dict(state["model"])
    return model.eval()


def export_checkpoint(
    source: str, out: str, manifest: Manifest | None = None, tokenizer: str = BUILTIN
) -> NeoConfig:
    """Write ``source`` (an export or a training checkpoint, local or ``s3://``) to ``out`` as a
    complete Hugging Face folder; returns the model's config. Raises :class:`ExportError`."""
    with local_dir(source) as local:
        if (local / CONFIG_NAME).exists():
            try:
                model = from_pretrained(local)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise ExportError(f"checkpoint {source}: not a NEO checkpoint ({e})") from e
        elif (local / TRAINER_STATE).exists():
            if manifest is None:
                raise ExportError(
                    f"checkpoint {source} is a training checkpoint ({TRAINER_STATE}); pass the "
                    "run's manifest (--manifest) so the model's config is known"
                )
            model = read_train_state(local, manifest)
        else:
            raise ExportError(
                f"checkpoint {source}: neither an export ({CONFIG_NAME}) nor a training checkpoint "
                f"({TRAINER_STATE})"
            )
    with tempfile.TemporaryDirectory(prefix="neo-export-") as tmp:
        save_pretrained(model, tmp)
        write_hf_extras(tmp, model.config, tokenizer)
        put_dir(Path(tmp), out)
    return model.config
