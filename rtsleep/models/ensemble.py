"""Several :class:`SleepNet` members with one config, scored as one model (seed ensemble).

Every member sees the same input and keeps its own recurrent state; the ensemble's stage
probabilities are the mean of the members' (``stage_logits`` = their log), and its apnea and
hypopnea probabilities are the means of the members' (logits = ``logit`` of the mean). With the
same config the members share ``n_times``, ``modalities`` and ``lookahead_epochs``, so every
caller of ``SleepNet`` (the daemon's scorer, evaluation) runs an ensemble unchanged.

State: the members' state dicts merged under ``"<member>.<key>"`` (flat, so it persists with
safetensors like a single model's).

**Derivation groups.** Members may be grouped by the kind of EEG derivation they were trained for
(``groups``, one name per member, e.g. :data:`~rtsleep.data.channels.REFERENTIAL` for members
fine-tuned on C3-A1/Cz-A1 and :data:`~rtsleep.data.channels.BIPOLAR` for members trained on
Fpz-Cz/Pz-Oz). An ensemble with more than one group carries, per bed, the group it scores with
in the state entry ``"group"`` (``(B,)`` int64, index into :attr:`SleepNetEnsemble.group_names`;
0, the group of member 0, in a fresh state): the output is the mean over that group's members
only. :func:`route_derivation` sets it from the EEG channel's label; a label that names no
derivation, or one no group was trained for, keeps group 0. A member whose group no bed of the
batch uses is not run, and its state stays as it was (the daemon's beds of one lab usually
share a montage, so this halves the cost). When a bed's group changes (its EEG label became known
after some epochs), the newly chosen members' context for that bed starts afresh, their epoch
count carried over; so the output never depends on which other beds shared a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from rtsleep.data.channels import eeg_derivation
from rtsleep.data.recording import Modality
from rtsleep.models.sleepnet import N_EPOCHS_KEY, SleepNet, SleepNetConfig, SleepNetOutput

GROUP_KEY = "group"
"""State entry of a grouped ensemble: ``(B,)`` int64, the group each bed scores with."""


class SleepNetEnsemble(nn.Module):
    """``n_members`` SleepNets of config ``cfg``, outputs averaged (see the module doc)."""

    member_group: Tensor

    def __init__(
        self, cfg: SleepNetConfig, n_members: int, groups: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        if n_members < 2:
            raise ValueError(f"an ensemble needs >= 2 members, got {n_members}")
        self.cfg = cfg
        self.members = nn.ModuleList(SleepNet(cfg) for _ in range(n_members))
        groups = tuple(groups) if groups is not None else ("",) * n_members
        if len(groups) != n_members:
            raise ValueError(f"groups names {len(groups)} members, the ensemble has {n_members}")
        if not all(isinstance(g, str) for g in groups):
            raise TypeError("ensemble group names must be strings")
        #: Group names in order of first appearance (index 0 = the group of member 0).
        self.group_names: tuple[str, ...] = tuple(dict.fromkeys(groups))
        #: One group name per member.
        self.groups: tuple[str, ...] = groups
        if self.grouped:  # each member's group index (the checkpoint stores the names)
            self.register_buffer("member_group", torch.tensor(
                [self.group_names.index(g) for g in groups], dtype=torch.int64),
                persistent=False)

    @property
    def grouped(self) -> bool:
        """True when the members form more than one derivation group."""
        return len(self.group_names) > 1

    @classmethod
    def from_members(
        cls, members: list[SleepNet], groups: Sequence[str] | None = None
    ) -> SleepNetEnsemble:
        """An ensemble holding copies of the weights of ``members`` (all of one config), with
        optional derivation ``groups`` (one name per member)."""
        if len(members) < 2:
            raise ValueError(f"an ensemble needs >= 2 members, got {len(members)}")
        cfg = members[0].cfg
        for i, m in enumerate(members[1:], start=1):
            if m.cfg.to_json() != cfg.to_json():
                raise ValueError(f"ensemble member {i} has another config than member 0")
        ens = cls(cfg, len(members), groups)
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
        if self.grouped:
            dev = device if device is not None else self.member_group.device
            state[GROUP_KEY] = torch.zeros(batch, dtype=torch.int64, device=dev)
        return state

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the recurrent state for ``batch`` beds."""
        return sum(self._member(i).state_nbytes(batch) for i in range(self.n_members))

    def _split(self, state: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        parts: list[dict[str, Tensor]] = [{} for _ in range(self.n_members)]
        for key, v in state.items():
            if key == GROUP_KEY and self.grouped:
                continue
            head, _, rest = key.partition(".")
            if not head.isdigit() or int(head) >= self.n_members or not rest:
                raise ValueError(f"SleepNetEnsemble: unexpected state entry {key!r}")
            parts[int(head)][rest] = v
        return parts

    # ------------------------------------------------------------- running
    def _weights(self, state: dict[str, Tensor] | None, batch: int,
                 device: torch.device) -> Tensor | None:
        """``(n_members, B)`` float, each bed's members weighted 1 / (size of its group); None
        for an ungrouped ensemble (plain mean)."""
        if not self.grouped:
            return None
        group = self._batch_group(state, batch, device)  # (B,)
        hit = (self.member_group[:, None] == group[None, :]).to(torch.float32)  # (n, B)
        return hit / hit.sum(dim=0, keepdim=True)

    def _batch_group(self, state: dict[str, Tensor] | None, batch: int,
                     device: torch.device) -> Tensor:
        """``(B,)`` int64: each bed's group (group 0 for every bed without a state)."""
        if state is None:
            return torch.zeros(batch, dtype=torch.int64, device=device)
        return self._group(state)

    def _group(self, state: dict[str, Tensor]) -> Tensor:
        try:
            return state[GROUP_KEY]
        except KeyError:
            raise ValueError(f"SleepNetEnsemble: state has no entry {GROUP_KEY!r}") from None

    def _used(self, weights: Tensor | None) -> list[bool]:
        """Per member: whether some bed of the batch scores with it."""
        if weights is None:
            return [True] * self.n_members
        return [bool(v) for v in (weights > 0).any(dim=1).tolist()]

    @staticmethod
    def _mean(outs: list[SleepNetOutput | None], weights: Tensor | None = None) -> SleepNetOutput:
        """Average the members' outputs (``None``: a member that was not run; its weight row
        is zero and its embedding block zeros)."""
        keep = [i for i, o in enumerate(outs) if o is not None]
        ran = [o for o in outs if o is not None]

        def avg(xs: list[Tensor]) -> Tensor:  # (n_run, B, ...) -> (B, ...)
            stacked = torch.stack(xs)
            if weights is None:
                return stacked.mean(dim=0)
            w = weights[keep].to(stacked.dtype)  # (n_run, B)
            return (stacked * w.view(*w.shape, *(1,) * (stacked.dim() - 2))).sum(dim=0)

        stage = avg([o.stage_probs for o in ran])  # (..., 5)
        apnea = avg([o.apnea_prob for o in ran])  # (...)
        hypopnea = avg([o.hypopnea_prob for o in ran])  # (...)
        blank = torch.zeros_like(ran[0].embedding)
        return SleepNetOutput(
            stage_logits=torch.log(stage.clamp_min(1e-12)),
            stage_probs=stage,
            apnea_logit=torch.logit(apnea, eps=1e-6),
            apnea_prob=apnea,
            hypopnea_logit=torch.logit(hypopnea, eps=1e-6),
            hypopnea_prob=hypopnea,
            embedding=torch.cat([blank if o is None else o.embedding for o in outs],
                                dim=-1),  # (..., n * d_model)
            epoch_index=ran[0].epoch_index,
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
        return self._forward_all(
            lambda m, part: m(x, mask, part, aux, aux_mask), state, x.shape[0], x.device)

    def forward_log_power(
        self,
        log_power: Tensor,
        state: dict[str, Tensor] | None = None,
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> tuple[SleepNetOutput, dict[str, Tensor]]:
        """``SleepNet.forward_log_power`` of every member (``log_power (B, T, n_bands)``),
        averaged; ``state`` is not modified."""
        return self._forward_all(
            lambda m, part: m.forward_log_power(log_power, part, aux, aux_mask), state,
            log_power.shape[0], log_power.device)

    def _forward_all(
        self,
        run: Callable[[SleepNet, dict[str, Tensor] | None],
                      tuple[SleepNetOutput, dict[str, Tensor]]],
        state: dict[str, Tensor] | None,
        batch: int,
        device: torch.device,
    ) -> tuple[SleepNetOutput, dict[str, Tensor]]:
        parts: list[dict[str, Tensor] | None] = (
            list(self._split(state)) if state is not None else [None] * self.n_members)
        weights = self._weights(state, batch, device)
        outs: list[SleepNetOutput | None] = []
        new_state: dict[str, Tensor] = {}
        for i, (part, used) in enumerate(zip(parts, self._used(weights), strict=True)):
            if used:
                out, st = run(self._member(i), part)
            else:  # not run: its state as it was
                out, st = None, (part if part is not None else
                                 self._member(i).init_state(batch, device=device))
            outs.append(out)
            new_state.update({f"{i}.{k}": v for k, v in st.items()})
        if self.grouped:
            new_state[GROUP_KEY] = self._batch_group(state, batch, device).clone()
        return self._mean(outs, weights), new_state

    def step(
        self,
        x: Tensor,
        mask: Tensor,
        state: dict[str, Tensor],
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> SleepNetOutput:
        """``SleepNet.step`` of every member, averaged; ``state`` is updated in place."""
        return self._step_all(lambda m, part: m.step(x, mask, part, aux, aux_mask), state,
                              x.shape[0], x.device)

    def step_log_power(
        self,
        log_power: Tensor,
        state: dict[str, Tensor],
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> SleepNetOutput:
        """``SleepNet.step_log_power`` of every member (``log_power (B, n_bands)``), averaged;
        ``state`` is updated in place."""
        return self._step_all(
            lambda m, part: m.step_log_power(log_power, part, aux, aux_mask), state,
            log_power.shape[0], log_power.device)

    def _step_all(
        self,
        run: Callable[[SleepNet, dict[str, Tensor]], SleepNetOutput],
        state: dict[str, Tensor],
        batch: int,
        device: torch.device,
    ) -> SleepNetOutput:
        parts = self._split(state)
        weights = self._weights(state, batch, device)
        outs = [run(self._member(i), part) if used else None
                for i, (part, used) in enumerate(zip(parts, self._used(weights), strict=True))]
        for i, part in enumerate(parts):  # members update their dicts in place; mirror them
            state.update({f"{i}.{k}": v for k, v in part.items()})
        return self._mean(outs, weights)

    def select_group(self, state: dict[str, Tensor], name: str | None) -> str:
        """Score every bed of ``state`` with the members of group ``name`` (group 0 when
        ``name`` is None or names no group); returns the group used."""
        if not self.grouped:
            return self.group_names[0]
        idx = self.group_names.index(name) if name in self.group_names else 0
        group = self._group(state)
        changed = group != idx  # (B,)
        if bool(changed.any()):
            self._restart_members(state, idx, changed)
        group.fill_(idx)
        return self.group_names[idx]

    def _restart_members(self, state: dict[str, Tensor], idx: int, rows: Tensor) -> None:
        """Fresh context for the members of group ``idx`` on the beds ``rows`` (``(B,)`` bool),
        each bed's epoch count carried over (the most any member has seen)."""
        batch = rows.shape[0]
        count = torch.stack([state[f"{i}.{N_EPOCHS_KEY}"]
                             for i in range(self.n_members)]).amax(dim=0)  # (B,)
        for i in range(self.n_members):
            if int(self.member_group[i]) != idx:
                continue
            fresh = self._member(i).init_state(batch, device=rows.device)
            fresh[N_EPOCHS_KEY] = count
            for k, v in fresh.items():
                cur = state[f"{i}.{k}"]
                sel = rows.view(-1, *(1,) * (cur.dim() - 1))
                cur.copy_(torch.where(sel, v.to(cur.dtype), cur))


def route_derivation(
    model: nn.Module, state: dict[str, Tensor], eeg_label: str | None,
    kind: str | None = None,
) -> str | None:
    """Point ``state`` (every bed in it) at the ensemble members trained for the derivation
    ``kind``, or when None the one ``eeg_label`` names
    (:func:`~rtsleep.data.channels.eeg_derivation`). Returns the group used, or None for a
    model without derivation groups (nothing to choose)."""
    if not isinstance(model, SleepNetEnsemble) or not model.grouped:
        return None
    if kind is None and eeg_label:
        kind = eeg_derivation(eeg_label)
    return model.select_group(state, kind)


__all__ = ["GROUP_KEY", "SleepNetEnsemble", "route_derivation"]
