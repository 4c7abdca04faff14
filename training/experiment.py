"""An experiment: one YAML naming the model config, the data source, the schedule, the switches
of Table 3.2, evaluation and distillation (METHODS.md). Relative paths in it are resolved against
its folder.

- SGD + momentum, linear warmup from 1e-6 then cosine decay (thesis §3.4.1), gradient clipping.
- Switches: ``mixup``, ``balanced_l1``, CEM (model config ``neck.cem``), warmup,
  ``multi_scale`` (per-iteration input size from a list), ``amp`` (float16 autocast + GradScaler
  on CUDA; ignored on the CPU), ``bn`` (train | frozen), ``sync_bn`` (under DDP with NCCL).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ms_perception_training.config import ConfigError, from_dict, load_yaml
from ms_perception_training.data.sources import DataConfig
from ms_perception_training.models.config import ModelConfig, load_model_config


@dataclass
class DistillConfig:
    method: str = ""                  # "" (none) | pdf | modality | crossmodal
    teacher: str = ""                 # teacher model config YAML (relative to the experiment file)
    teacher_checkpoint: str = ""      # its trained weights (relative to the experiment file)
    # PDF-Distil (thesis §3.3)
    pdf_weights: str = "soft"         # soft (PDF-Distil) | uniform (FitNets) | hard / similar (top / bottom-k ablations)
    pdf_metric: str = "l2"            # l2 (best) | l1 | kl
    pdf_top_fraction: float = 0.25    # hard sampling: top 25% / 50%
    pdf_weight: float = 1.0
    # Modality Distillation (WACV 2022)
    md_stage: str = ""                # default: the teacher's fusion stage
    md_attention: bool = True
    md_semantic: str = "f_mse"        # f_mse | mse (ablation) | none
    md_attention_weight: float = 1.0
    md_semantic_weight: float = 1.0
    # Cross-modal distillation (Liu et al., eq. 14-18)
    cm_stage: str = ""                # default: the student's last neck input stage
    lam: float = 1.0                  # λ (regression)
    eta: float = 1.0                  # η (segmentation)
    rho: float = 0.5                  # ρ (feature)
    zeta: float = 0.5                 # ζ (hard vs soft classification)
    epsilon: float = 0.5              # ε (teacher-bounded regression term)
    xi: float = 0.5                   # ξ (hard vs soft segmentation)
    temperature: float = 1.0
    delta: float = 0.0                # δ margin of eq. 17 (not given in the paper)

    def __post_init__(self):
        if self.method not in ("", "pdf", "modality", "crossmodal"):
            raise ConfigError(f"distill.method must be one of '', 'pdf', 'modality', 'crossmodal'; got {self.method!r}")
        if self.pdf_weights not in ("soft", "uniform", "hard", "similar"):
            raise ConfigError(f"distill.pdf_weights must be soft, uniform, hard or similar; got {self.pdf_weights!r}")
        if self.pdf_metric not in ("l2", "l1", "kl"):
            raise ConfigError(f"distill.pdf_metric must be l2, l1 or kl; got {self.pdf_metric!r}")
        if self.md_semantic not in ("f_mse", "mse", "none"):
            raise ConfigError(f"distill.md_semantic must be f_mse, mse or none; got {self.md_semantic!r}")


@dataclass
class EvalConfig:
    pairs: int = 0                    # synthetic: validation pairs (0: no evaluation)
    seed: int = 1001                  # synthetic: generator seed (distinct from the training pool's)
    split: str = ""                   # disk datasets: the evaluation split ("": none; "test": the test list)
    every: int = 0                    # iterations between evaluations (0: only at the end)
    keep_best: bool = False           # also keep best.pt: the weights of the curve's lowest person miss rate
                                      # (overall), the starting weights of a fine-tune included
    synthetic: dict = field(default_factory=dict)  # synthetic: the held-out set's generator settings where
                                      # they differ from data's (e.g. {crossover_fraction: 0.1}), so that
                                      # recipes with other training data are evaluated on the same pairs

    def __post_init__(self):
        bad = sorted(set(self.synthetic) - set(HELD_OUT_SETTINGS))
        if bad:
            raise ConfigError(f"eval.synthetic: unknown key(s) {bad}; valid keys: {list(HELD_OUT_SETTINGS)}")
        for k, v in self.synthetic.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"eval.synthetic.{k}: expected a number, got {v!r}")


# the generator settings a held-out set may take apart from the training data's (eval.synthetic)
HELD_OUT_SETTINGS = ("width", "height", "thermal_factor", "night_fraction", "crossover_fraction", "sequence_length")


def held_out_data(cfg: "FitConfig") -> DataConfig:
    """The synthetic held-out set's data settings: the training data's, with ``eval.pairs``,
    ``eval.seed`` and ``eval.synthetic`` in their place."""
    from dataclasses import replace
    over = {k: (int(v) if k in ("width", "height", "thermal_factor", "sequence_length") else float(v))
            for k, v in cfg.eval.synthetic.items()}
    return replace(cfg.data, pairs=cfg.eval.pairs, seed=cfg.eval.seed, **over)


@dataclass
class FitConfig:
    model: str = ""                   # model config YAML (relative to this file)
    data: DataConfig = field(default_factory=DataConfig)
    iterations: int = 300
    batch_size: int = 8               # global batch (split over DDP processes)
    lr: float = 0.01                  # thesis: SGD lr 1e-2, warmup from 1e-6, cosine decay
    warmup_iterations: int = 100      # thesis: 500 (shortened for short CPU runs)
    lr_schedule: str = "cosine"       # cosine: linear warmup + cosine decay (thesis); step: lr from the
                                      # first iteration, x0.1 at 2/3 and 8/9 of the run (the Table 3.2 baseline)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    guidance_weight: float = 1.0      # L_intra and L_inter weights (eq. 4.17: 1)
    cfr_weight: float = 1.0           # CFR mask Dice weight
    seg_aux_weight: float = 1.0       # segmentation auxiliary head (CFL paper: η = 1)
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 100       # iterations between checkpoints (always one at the end)
    assigner: str = "iou"             # "iou" (static 0.5/0.4) or "mutual_guidance" (thesis §3.2)
    mg_sigma: float = 2.0             # Mutual Guidance σ (> 1; the thesis does not state its value)
    balanced_l1: bool = True          # False: smooth L1 (the Table 3.2 switch)
    mixup: float = 0.0                # probability that a sample is mixed (0: off)
    multi_scale: list[list[int]] = field(default_factory=list)   # [[width, height], ...]
    amp: bool = True                  # CUDA only
    device: str = "auto"              # auto | cpu | cuda
    bn: str = "train"                 # train | frozen (BatchNorm in eval mode, affine still trained)
    sync_bn: bool = True              # SyncBatchNorm under DDP with NCCL
    tensorboard: bool = True
    init_checkpoint: str = ""         # start from these weights (fine-tuning; not a resume)
    parent_model: str = ""            # the deployed model (ONNX / engine card) init_checkpoint was exported as:
                                      # its hash and lineage become the new model's parent (fleet fine-tuning)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        if self.assigner not in ("iou", "mutual_guidance"):
            raise ConfigError(f"fit.assigner must be 'iou' or 'mutual_guidance', got {self.assigner!r}")
        if self.lr_schedule not in ("cosine", "step"):
            raise ConfigError(f"fit.lr_schedule must be 'cosine' or 'step', got {self.lr_schedule!r}")
        if self.bn not in ("train", "frozen"):
            raise ConfigError(f"fit.bn must be 'train' or 'frozen', got {self.bn!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"fit.device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"fit.mixup is a probability in [0, 1], got {self.mixup}")
        for s in self.multi_scale:
            if len(s) != 2 or min(s) <= 0:
                raise ConfigError(f"fit.multi_scale entries are [width, height], got {s}")
        if self.iterations <= 0 or self.batch_size <= 0:
            raise ConfigError("fit.iterations and fit.batch_size must be positive")


def load_fit_config(path: str | Path) -> tuple[FitConfig, ModelConfig]:
    cfg, mcfg, _ = load_experiment(path)
    return cfg, mcfg


def load_experiment(path: str | Path) -> tuple[FitConfig, ModelConfig, ModelConfig | None]:
    """The fit config, its model config and (with ``distill``) the teacher's; relative paths in
    the file are resolved against its folder."""
    p = Path(path)
    data = load_yaml(p)
    cfg = from_dict(FitConfig, data, "fit")
    if not cfg.model:
        raise ConfigError(f"{p}: 'model' must name a model config YAML")

    def rel(x: str) -> str:
        return str(p.parent / x) if x and not Path(x).is_absolute() else x
    mcfg = load_model_config(rel(cfg.model))
    tcfg = None
    if cfg.distill.method:
        if not cfg.distill.teacher:
            raise ConfigError(f"{p}: distill.method {cfg.distill.method!r} needs distill.teacher (a model config)")
        tcfg = load_model_config(rel(cfg.distill.teacher))
        cfg.distill.teacher_checkpoint = rel(cfg.distill.teacher_checkpoint)
    cfg.init_checkpoint = rel(cfg.init_checkpoint)
    cfg.parent_model = rel(cfg.parent_model)
    for data in [cfg.data, *cfg.data.also]:
        if data.type != "synthetic":
            data.root = rel(data.root)
            data.annotation_file = rel(data.annotation_file)
            if data.annotations.endswith(".json"):
                data.annotations = rel(data.annotations)
    return cfg, mcfg, tcfg
