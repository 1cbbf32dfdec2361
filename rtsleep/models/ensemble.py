"""Several :class:`SleepNet` members with one config, scored as one model (seed ensemble).

Every member sees the same input and keeps its own recurrent state; the ensemble's stage
probabilities are the mean of the members' (``stage_logits`` = their log), and its apnea and
hypopnea probabilities are the means of the members' (logits = ``logit`` of the mean). With the
same config the members share ``n_times``, ``modalities`` and ``lookahead_epochs``, so every
caller of ``SleepNet`` (the daemon's scorer, evaluation) runs an ensemble unchanged.

State: the members' state dicts merged under ``"<member>.<key>"`` (flat, so it persists with
safetensors like a single model's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rtsleep.data.recording import Modality
from rtsleep.models.sleepnet import SleepNet, SleepNetConfig, SleepNetOutput


class SleepNetEnsemble(nn.Module):
    """``n_members`` SleepNets of config ``cfg``, outputs averaged (see the module doc)."""

    def __init__(self, cfg: SleepNetConfig, n_members: int) -> None:
        super().__init__()
        if n_members < 2:
            raise ValueError(f"an ensemble needs >= 2 members, got {n_members}")
        self.cfg = cfg
        self.members = nn.ModuleList(SleepNet(cfg) for _ in range(n_members))

    @classmethod
    def from_members(cls, members: list[SleepNet]) -> SleepNetEnsemble:
        """An ensemble holding copies of the weights of ``members`` (all of one config)."""
        if len(members) < 2:
            raise ValueError(f"an ensemble needs >= 2 members, got {len(members)}")
        cfg = members[0].cfg
        for i, m in enumerate(members[1:], start=1):
            if m.cfg.to_json() != cfg.to_json():
                raise ValueError(f"ensemble member {i} has another config than member 0")
        ens = cls(cfg, len(members))
        for dst, src in zip(ens.members, members, strict=True):
            dst.load_state_dict(src.state_dict())
        return ens.eval()

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def modalities(self) -> tuple[Modality, ...]:
        return self._member(0).modalities

    @property
    def n_times(self) -> int:
        """Samples per modality per epoch (S)."""
        return self._member(0).n_times

    def _member(self, i: int) -> SleepNet:
        m = self.members[i]
        if not isinstance(m, SleepNet):  # pragma: no cover - the constructor builds SleepNets
            raise TypeError(f"ensemble member {i} is a {type(m).__name__}")
        return m

    # --------------------------------------------------------------- state
    def init_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """Fresh state for ``batch`` beds: every member's, keys prefixed ``"<member>."``."""
        state: dict[str, Tensor] = {}
        for i in range(self.n_members):
            for k, v in self._member(i).init_state(batch, device=device, dtype=dtype).items():
                state[f"{i}.{k}"] = v
        return state

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the recurrent state for ``batch`` beds."""
        return sum(self._member(i).state_nbytes(batch) for i in range(self.n_members))

    def _split(self, state: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        parts: list[dict[str, Tensor]] = [{} for _ in range(self.n_members)]
        for key, v in state.items():
            head, _, rest = key.partition(".")
            if not head.isdigit() or int(head) >= self.n_members or not rest:
                raise ValueError(f"SleepNetEnsemble: unexpected state entry {key!r}")
            parts[int(head)][rest] = v
        return parts

    # ------------------------------------------------------------- running
    @staticmethod
    def _mean(outs: list[SleepNetOutput]) -> SleepNetOutput:
        stage = torch.stack([o.stage_probs for o in outs]).mean(dim=0)  # (..., 5)
        apnea = torch.stack([o.apnea_prob for o in outs]).mean(dim=0)  # (...)
        hypopnea = torch.stack([o.hypopnea_prob for o in outs]).mean(dim=0)  # (...)
        return SleepNetOutput(
            stage_logits=torch.log(stage.clamp_min(1e-12)),
            stage_probs=stage,
            apnea_logit=torch.logit(apnea, eps=1e-6),
            apnea_prob=apnea,
            hypopnea_logit=torch.logit(hypopnea, eps=1e-6),
            hypopnea_prob=hypopnea,
            embedding=torch.cat([o.embedding for o in outs], dim=-1),  # (..., n * d_model)
            epoch_index=outs[0].epoch_index,
        )

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        state: dict[str, Tensor] | None = None,
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> tuple[SleepNetOutput, dict[str, Tensor]]:
        """``SleepNet.forward`` of every member, averaged; ``state`` is not modified."""
        parts = self._split(state) if state is not None else [None] * self.n_members
        outs, new_state = [], {}
        for i, part in enumerate(parts):
            out, st = self._member(i)(x, mask, part, aux, aux_mask)
            outs.append(out)
            new_state.update({f"{i}.{k}": v for k, v in st.items()})
        return self._mean(outs), new_state

    def step(
        self,
        x: Tensor,
        mask: Tensor,
        state: dict[str, Tensor],
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> SleepNetOutput:
        """``SleepNet.step`` of every member, averaged; ``state`` is updated in place."""
        parts = self._split(state)
        outs = [self._member(i).step(x, mask, part, aux, aux_mask)
                for i, part in enumerate(parts)]
        for i, part in enumerate(parts):  # members update their dicts in place; mirror them
            state.update({f"{i}.{k}": v for k, v in part.items()})
        return self._mean(outs)


__all__ = ["SleepNetEnsemble"]
