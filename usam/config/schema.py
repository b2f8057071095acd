"""Types, ranges and choices of every knob. Defaults live once, in ``usam/conf`` (YAML).

Dataclasses are frozen views of the validated config; ``check()`` adds the
cross-field rules a single field cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, get_args

from usam.config.validate import knob

DatasetName = Literal["moving_digits", "bouncing_shapes", "video_folder"]
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit; a larger one would fail inside torch or numpy, not here


@dataclass(frozen=True)
class SplitCounts:
    train: int = knob(ge=1, doc="videos in the train split")
    val: int = knob(ge=1, doc="videos in the validation split")
    test: int = knob(ge=1, doc="videos in the test split")


@dataclass(frozen=True)
class MovingDigitsConfig:
    digits_per_video: int = knob(ge=1, le=4, doc="digits bouncing in each video; the label is the first digit")
    digit_size: int = knob(ge=8, le=64, doc="pixel size the 8x8 sklearn digits are upscaled to")
    speed: list[float] = knob(ge=0.0, le=16.0, min_len=2, doc="[min, max] pixels per frame")
    source_split: dict[str, float] = knob(
        ge=0.0, le=1.0, doc="share of the 1,797 source digit images reserved for each split (no digit image leaks)"
    )

    def check(self) -> list[str]:
        out = []
        if len(self.speed) != 2 or self.speed[0] > self.speed[1]:
            out.append(f"moving_digits.speed = {self.speed}: expected [min, max] with min <= max")
        if set(self.source_split) != {"train", "val", "test"} or abs(sum(self.source_split.values()) - 1) > 1e-6:
            out.append(f"moving_digits.source_split = {self.source_split}: expected train/val/test shares summing to 1")
        elif min(self.source_split.values()) <= 0:
            out.append(f"moving_digits.source_split = {self.source_split}: every split needs a share > 0")
        return out


@dataclass(frozen=True)
class DomainRandomization:
    p: float = knob(ge=0.0, le=1.0, doc="share of videos with a randomized background texture and palette")
    noise: float = knob(ge=0.0, le=1.0, doc="std of the background noise texture (0..1 intensity)")


@dataclass(frozen=True)
class BouncingShapesConfig:
    shapes: list[Literal["circle", "square", "triangle"]] = knob(min_len=1, doc="shape kinds to draw")
    shapes_per_video: int = knob(ge=1, le=4, doc="shapes per video; the first one performs the action cue")
    shape_size: list[int] = knob(ge=3, le=64, min_len=2, doc="[min, max] shape size in pixels")
    speed: list[float] = knob(ge=0.0, le=16.0, min_len=2, doc="[min, max] initial speed in pixels per frame")
    speed_change: float = knob(gt=1.0, le=4.0, doc="factor the speed is multiplied/divided by at the action")
    direction_jitter_deg: float = knob(ge=0.0, le=40.0, doc="max deviation of the cued direction from its axis")
    domain_randomization: DomainRandomization = knob()

    def check(self) -> list[str]:
        out = []
        for name in ("shape_size", "speed"):
            v = getattr(self, name)
            if len(v) != 2 or v[0] > v[1]:
                out.append(f"bouncing_shapes.{name} = {v}: expected [min, max] with min <= max")
        return out


@dataclass(frozen=True)
class VideoFolderConfig:
    root: Optional[str] = knob(doc="folder holding the videos; every manifest path must stay inside it")
    manifest: str = knob(doc="CSV (path,label[,split][,caption]) relative to root")
    on_error: Literal["skip", "fail"] = knob(doc="what an unreadable or corrupt video does")
    split_shares: dict[str, float] = knob(ge=0.0, le=1.0, doc="train/val/test shares when the manifest has no split")


@dataclass(frozen=True)
class DataConfig:
    name: DatasetName = knob(doc="dataset the training stages use")
    build: list[DatasetName] = knob(min_len=1, doc="datasets the `data` stage generates")
    root: str = knob(doc="where datasets are written, relative to the project root")
    seed: int = knob(ge=0, le=SEED_MAX, doc="generation seed; the same seed gives the same bytes")
    frames: int = knob(ge=2, le=256, doc="frames per video")
    frame_size: int = knob(ge=8, le=1024, doc="height and width of the stored frames")
    num_videos: SplitCounts = knob(doc="videos per split for the synthetic datasets")
    moving_digits: MovingDigitsConfig = knob()
    bouncing_shapes: BouncingShapesConfig = knob()
    video_folder: VideoFolderConfig = knob()

    def check(self) -> list[str]:
        out = []
        if "video_folder" in self.build or self.name == "video_folder":
            if not self.video_folder.root:
                out.append("data.video_folder.root is null: set it to your videos folder to use `video_folder`")
        if self.name not in self.build:
            out.append(f"data.name = {self.name!r} is not in data.build = {self.build}: add it so it gets built")
        if len(set(self.build)) != len(self.build):
            out.append(f"data.build = {self.build}: lists a dataset twice")
        if self.moving_digits.digit_size > self.frame_size:
            out.append(f"data.moving_digits.digit_size = {self.moving_digits.digit_size} > data.frame_size = "
                       f"{self.frame_size}: the digit must fit in the frame")
        if self.bouncing_shapes.shape_size[-1] > self.frame_size:
            out.append(f"data.bouncing_shapes.shape_size = {self.bouncing_shapes.shape_size}: the largest shape "
                       f"must fit in data.frame_size = {self.frame_size}")
        return out


@dataclass(frozen=True)
class ColorJitter:
    brightness: float = knob(ge=0.0, le=1.0, doc="max relative brightness change")
    contrast: float = knob(ge=0.0, le=1.0, doc="max relative contrast change")
    saturation: float = knob(ge=0.0, le=1.0, doc="max relative saturation change")
    hue: float = knob(ge=0.0, le=0.5, doc="max hue shift (fraction of the colour wheel)")


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = knob(doc="apply training-time augmentation (never to val/test)")
    color_jitter: ColorJitter = knob()
    random_crop_padding: int = knob(ge=0, le=64, doc="pad then crop back at a random offset (0: off)")
    hflip_p: float = knob(ge=0.0, le=1.0, doc="probability of a horizontal flip")
    vflip_p: float = knob(ge=0.0, le=1.0, doc="probability of a vertical flip")
    rotation_deg: float = knob(ge=0.0, le=180.0, doc="max rotation in degrees (same angle for every frame)")
    frame_strides: list[int] = knob(ge=1, le=8, min_len=1, doc="temporal stride drawn per clip (stride jitter)")
    reverse_p: float = knob(ge=0.0, le=1.0, doc="probability of playing a clip backwards")
    clip_frames: Optional[int] = knob(ge=2, doc="frames per sampled clip (null: all frames, fixed start)")


@dataclass(frozen=True)
class Normalize:
    mode: Literal["imagenet", "dataset", "half", "none"] = knob(
        doc="imagenet: the ImageNet mean/std; dataset: train-split statistics; half: map [0,1] to [-1,1]"
    )


@dataclass(frozen=True)
class PreprocessConfig:
    resize: int = knob(ge=8, le=2048, doc="resize the shorter side to this (seed: 256 then crop 224)")
    crop_size: int = knob(ge=8, le=2048, doc="center crop to this square size after resizing")
    normalize: Normalize = knob()
    augment: AugmentConfig = knob()

    def check(self) -> list[str]:
        if self.crop_size > self.resize:
            return [f"preprocess.crop_size = {self.crop_size} > preprocess.resize = {self.resize}: crop must fit"]
        return []


@dataclass(frozen=True)
class Conditioning:
    class_label: bool = knob(doc="condition on the class: the digit (moving_digits), the shape kind (bouncing_shapes), the label (video_folder)")
    action: bool = knob(doc="condition on the action cue (bouncing_shapes only)")
    text: bool = knob(doc="condition on the templated caption through a small learned text encoder (cross-attention)")
    context_frames: bool = knob(
        doc="image-to-video: the first frame is given (encoded, cross-attended, added to every clip's input) "
            "and its tokens are forced during sampling"
    )
    dropout: float = knob(ge=0.0, lt=1.0, doc="probability of dropping the whole condition (classifier-free guidance)")


@dataclass(frozen=True)
class USAMLoss:
    scale_weight_power: float = knob(ge=0.0, le=2.0, doc="stage weight = min(tokens ** power, cap): larger scales weigh more")
    scale_weight_cap: float = knob(ge=1.0, le=1e6, doc="cap of a stage's weight")
    label_smoothing: float = knob(ge=0.0, lt=1.0, doc="label smoothing of the per-bit cross-entropy")
    self_correction: float = knob(ge=0.0, le=0.5, doc="bitwise self-correction: max share of a stage's bits flipped (0: off)")


@dataclass(frozen=True)
class SamplingConfig:
    cfg: float = knob(ge=0.0, le=50.0, doc="classifier-free guidance scale (1: the conditional model)")
    cfg_ramp: Literal["linear", "constant"] = knob(doc="linear: from 1 at a segment's first scale to cfg at its last")
    temperature: list[float] = knob(ge=0.0, le=10.0, min_len=1, doc="one value, or one per scale (coarse to fine)")
    top_k: Literal[0, 1, 2] = knob(doc="per bit: 1 takes the likelier value, 0 or 2 sample both")
    top_p: float = knob(ge=0.0, le=1.0, doc="a bit whose likelier value has at least this probability is not sampled")
    per_class: int = knob(ge=1, le=256, doc="videos sampled per class for the sample grids")


BaselineName = Literal["raster_ar", "maskgit", "gan", "diffusion"]
# what `usam train` can train (usam.train.tasks builds them); named here so the CLI lists them without torch
TASK_NAMES = ("evaluator_frame", "evaluator_clip", "tokenizer", "usam", *get_args(BaselineName))


@dataclass(frozen=True)
class TransformerSize:
    width: int = knob(ge=16, le=8192, doc="transformer width")
    depth: int = knob(ge=1, le=128, doc="transformer blocks")
    heads: int = knob(ge=1, le=128, doc="attention heads")

    def check(self) -> list[str]:
        return [f"{{path}}.width = {self.width} is not divisible by {{path}}.heads = {self.heads}"] if self.width % self.heads else []


GuidanceRamp = Literal["linear", "constant"]


@dataclass(frozen=True)
class RasterARBaseline:
    size: TransformerSize = knob()
    lr: Optional[float] = knob(gt=0.0, le=1.0, doc="its peak learning rate; null: train.lr")
    temperature: float = knob(ge=0.0, le=10.0, doc="sampling temperature per bit")
    cfg: float = knob(ge=0.0, le=50.0, doc="classifier-free guidance scale (1: off)")
    cfg_ramp: GuidanceRamp = knob(doc="linear: from 1 at the first token to cfg at the last")


@dataclass(frozen=True)
class MaskGITBaseline:
    size: TransformerSize = knob()
    lr: Optional[float] = knob(gt=0.0, le=1.0, doc="its peak learning rate; null: train.lr")
    steps: int = knob(ge=1, le=1024, doc="parallel decoding steps (cosine masking schedule)")
    temperature: float = knob(ge=0.0, le=10.0, doc="sampling temperature per bit")
    cfg: float = knob(ge=0.0, le=50.0, doc="classifier-free guidance scale (1: off)")
    cfg_ramp: GuidanceRamp = knob(doc="linear: from 1 at the first decoding step to cfg at the last")


GANAugment = Literal["translation", "brightness", "contrast", "cutout"]


@dataclass(frozen=True)
class GANBaseline:
    noise_dim: int = knob(ge=1, le=4096, doc="generator noise size")
    channels: int = knob(ge=4, le=1024, doc="generator channels at full resolution")
    critic_channels: int = knob(ge=4, le=1024, doc="critic channels at its first layer")
    lr: Optional[float] = knob(gt=0.0, le=1.0, doc="the generator's learning rate; null: train.lr")
    critic_lr_ratio: float = knob(gt=0.0, le=100.0, doc="the critic's learning rate as a multiple of the generator's (TTUR)")
    betas: list[float] = knob(ge=0.0, lt=1.0, min_len=2, doc="Adam [beta1, beta2] of both players")
    r1_gamma: float = knob(ge=0.0, le=1000.0, doc="R1 penalty weight gamma on real videos (term gamma/2 |grad|^2; 0: off)")
    r1_every: int = knob(ge=1, le=1000, doc="R1 every this many steps, weighted up as many times (lazy regularization)")
    ema_decay: float = knob(ge=0.0, lt=1.0, doc="EMA of the generator per step (ramped up early); the EMA is what samples")
    augment: list[GANAugment] = knob(doc="DiffAugment transforms of real and fake videos before the critic")
    classifier_weight: float = knob(ge=0.0, le=100.0, doc="auxiliary classifier (AC-GAN): weight of its cross-entropy "
                                                          "for the classifier (real) and the generator (fake); 0: none")

    def check(self) -> list[str]:
        return [f"{{path}}.betas = {self.betas} must be [beta1, beta2]"] if len(self.betas) != 2 else []


@dataclass(frozen=True)
class DiffusionBaseline:
    size: TransformerSize = knob()
    lr: Optional[float] = knob(gt=0.0, le=1.0, doc="its peak learning rate; null: train.lr")
    timesteps: int = knob(ge=10, le=10000, doc="DDPM training timesteps (linear beta schedule)")
    sample_steps: int = knob(ge=1, le=10000, doc="DDIM sampling steps")
    eta: float = knob(ge=0.0, le=1.0, doc="DDIM eta: 0 deterministic, 1 DDPM-like")
    cfg: float = knob(ge=0.0, le=50.0, doc="classifier-free guidance scale (1: off)")

    def check(self) -> list[str]:
        if self.sample_steps > self.timesteps:
            return [f"{{path}}.sample_steps = {self.sample_steps} > {{path}}.timesteps = {self.timesteps}"]
        return []


@dataclass(frozen=True)
class BaselinesConfig:
    """The comparison's baselines: trained like USAM (``train``: same recipe, data and seed), class-conditional."""

    models: list[BaselineName] = knob(doc="baselines the pipeline trains and evaluates")
    datasets: list[DatasetName] = knob(doc="datasets the baselines train on (a subset of data.build)")
    raster_ar: RasterARBaseline = knob()
    maskgit: MaskGITBaseline = knob()
    gan: GANBaseline = knob()
    diffusion: DiffusionBaseline = knob()


@dataclass(frozen=True)
class ModelConfig:
    width: int = knob(ge=16, le=8192, doc="transformer width")
    depth: int = knob(ge=1, le=128, doc="transformer blocks")
    heads: int = knob(ge=1, le=128, doc="attention heads")
    mlp_ratio: float = knob(gt=0.0, le=16.0, doc="SwiGLU hidden size as a multiple of the width (2/3 of it, as usual)")
    dropout: float = knob(ge=0.0, le=0.5, doc="dropout (seed: modest)")
    drop_path: float = knob(ge=0.0, le=0.5, doc="stochastic depth rate")
    qk_norm: bool = knob(doc="RMS-normalize queries and keys (stabilizes attention logits)")
    attention: Literal["block_causal", "sparse", "factorized"] = knob(
        doc="block_causal (VAR): all earlier stages; sparse (InfinityStar): own stage + previous clip's largest scale; "
            "factorized: spatial within a frame + causal temporal"
    )
    positions: Literal["rope", "learned"] = knob(doc="spacetime RoPE (scale, frame, row, column) or learned absolute + level")
    conditioning: Conditioning = knob()
    loss: USAMLoss = knob()
    sampling: SamplingConfig = knob()

    def check(self) -> list[str]:
        out = []
        if self.width % self.heads:
            out.append(f"model.width = {self.width} is not divisible by model.heads = {self.heads}")
        elif self.positions == "rope" and (self.width // self.heads) % 8:
            out.append(f"model.positions = 'rope' splits each head's {self.width // self.heads} dims over 4 axes: "
                       "use a head dim (width / heads) divisible by 8, or positions=learned")
        return out


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a recipe runs: placement, threads, determinism, checkpoint and log cadence."""

    workers: int = knob(ge=1, le=4096, doc="Ray Train workers (DDP ranks)")
    launcher: Literal["auto", "ray", "local"] = knob(
        doc="auto: one worker with no cluster to join and no fault injection trains in this process (no Ray "
            "start-up, no restarts); ray: a Ray Train worker group; local: this process")
    use_gpu: bool = knob(doc="one GPU per worker, NCCL backend")
    cpus_per_worker: float = knob(gt=0.0, le=256.0, doc="CPUs reserved per worker")
    threads_per_worker: int = knob(ge=1, le=256, doc="torch intra-op threads per worker")
    backend: Literal["auto", "gloo", "nccl"] = knob(doc="DDP backend; auto: nccl on GPU, gloo on CPU")
    dataloader_workers: int = knob(ge=0, le=64, doc="DataLoader worker processes per training worker")
    deterministic: bool = knob(doc="torch deterministic algorithms (bit-exact CPU runs)")
    grad_checkpointing: bool = knob(doc="recompute block activations in backward to save memory")
    optimizer_impl: Literal["auto", "foreach", "fused"] = knob(
        doc="AdamW implementation: auto (torch's choice: a per-tensor loop on CPU), foreach or fused (one "
            "batched update; rounds differently, so weights differ from auto's)")
    channels_last: bool = knob(doc="convolution kernels in channels-last layout (oneDNN's NHWC/NDHWC kernels; "
                                   "changes float rounding)")
    checkpoint_every: int = knob(ge=1, doc="optimizer steps between checkpoints (also at each epoch end)")
    keep_checkpoints: int = knob(ge=1, le=1000, doc="checkpoints kept in Ray storage")
    max_failures: int = knob(ge=0, le=1000, doc="worker-group restarts from the last checkpoint")
    log_every: int = knob(ge=1, doc="optimizer steps between logged metrics and progress lines")
    visuals_every: int = knob(ge=1, doc="epochs between logged sample grids / panels (the last epoch always logs)")

    def check(self) -> list[str]:
        if self.backend == "nccl" and not self.use_gpu:
            return ["{path}.backend = 'nccl' needs {path}.use_gpu=true (CPU workers use gloo)"]
        if self.launcher == "local" and self.workers > 1:
            return [f"{{path}}.launcher = 'local' trains one worker in this process, but {{path}}.workers = "
                    f"{self.workers}: use launcher=ray (or auto) for a worker group"]
        return []


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe (optimiser, schedule, batch, epochs, precision, regularisation) and, under ``runtime``,
    where it runs."""

    lr: float = knob(gt=0.0, le=1.0, doc="peak AdamW learning rate (seed: 1e-4..3e-4)")
    weight_decay: float = knob(ge=0.0, le=1.0, doc="AdamW weight decay (seed: 1e-3..1e-2)")
    grad_clip: float = knob(ge=0.0, le=100.0, doc="max global grad norm, 0 disables (seed: 1..5)")
    batch_size: int = knob(ge=1, le=65536, doc="samples per optimizer step on each worker")
    grad_accum: int = knob(ge=1, le=1024, doc="micro-batches accumulated per optimizer step")
    epochs: int = knob(ge=1, le=100000, doc="passes over the train split")
    max_steps: Optional[int] = knob(ge=1, doc="stop after this many optimizer steps (null: all epochs)")
    warmup_steps: int = knob(ge=0, doc="linear warmup steps before the decay (seed: thousands at full scale)")
    schedule: Literal["cosine", "cosine_restarts", "linear", "constant"] = knob(doc="decay after warmup")
    restart_steps: int = knob(ge=1, doc="cycle length of cosine_restarts, in optimizer steps")
    min_lr_ratio: float = knob(ge=0.0, le=1.0, doc="floor of the decay as a fraction of lr")
    label_smoothing: float = knob(ge=0.0, lt=1.0, doc="label smoothing of classification losses")
    ema_decay: float = knob(ge=0.0, lt=1.0, doc="EMA of weights per optimizer step (0: off)")
    precision: Literal["fp32", "bf16", "fp16"] = knob(doc="autocast dtype; bf16 also on CPU, fp16 needs CUDA")
    cache_latents: bool = knob(doc="generators on a frozen tokenizer: encode each train/val video once, un-augmented, instead of every step")
    runtime: RuntimeConfig = knob()

    def check(self) -> list[str]:
        if self.precision == "fp16" and not self.runtime.use_gpu:
            return ["{path}.precision = 'fp16' needs {path}.runtime.use_gpu=true (on CPU use bf16)"]
        return []


@dataclass(frozen=True)
class DebugConfig:
    """Chaos tests: faults injected on purpose, to prove that resume and the non-finite guard work."""

    fault_injection_step: Optional[int] = knob(ge=1, doc="inject a fault once at this optimizer step (null: off)")
    fault_injection_kind: Literal["kill", "nan_loss"] = knob(doc="kill: rank 0 process dies; nan_loss: rank 0 loss becomes NaN")


@dataclass(frozen=True)
class SelectConfig:
    """How the comparison picks each generator's sampling settings: a grid on the val split (no retraining),
    scored with the evaluation suite's FID-domain and class accuracy; the chosen setting is the lowest
    FID-domain among the settings whose class accuracy is at least ``class_acc_share`` of the grid's best.
    The test split is then scored once, at that setting."""

    num_samples: int = knob(ge=10, le=100000, doc="videos sampled per grid point (scored against the val split)")
    class_acc_share: float = knob(ge=0.0, le=1.0, doc="a setting qualifies when its class accuracy is at least this "
                                                      "share of the best in the grid")
    grids: dict[str, list[str]] = knob(
        doc="per generator: axes in Hydra's sweep syntax, `key=v1,v2,...` (values as YAML); the grid is their product")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = knob(ge=1, le=65536, doc="evaluation batch size")
    num_samples: int = knob(ge=1, doc="generated videos per evaluation")
    every_epochs: int = knob(ge=0, le=100000, doc="epochs between quality checks of a training generator "
                                                  "(FID-domain and class accuracy on a val sample); 0: off")
    quality_samples: int = knob(ge=10, le=100000, doc="videos sampled per quality check during training")
    select: SelectConfig = knob()
    inception_weights: Optional[str] = knob(doc="local Inception-v3 weights for standard FID/IS (never downloaded)")
    inception_sha256: Optional[str] = knob(doc="sha256 of eval.inception_weights, checked before use")
    lpips_weights: Optional[str] = knob(
        doc="local torchvision AlexNet state dict, the LPIPS backbone (never downloaded); null: the domain perceptual distance"
    )
    lpips_sha256: Optional[str] = knob(doc="sha256 of eval.lpips_weights, checked before use (`sha256sum FILE`)")

    def check(self) -> list[str]:
        out = []
        for name in ("lpips", "inception"):
            if getattr(self, f"{name}_weights") and not getattr(self, f"{name}_sha256"):
                out.append(f"{{path}}.{name}_weights is set but {{path}}.{name}_sha256 is null: set it to the file's "
                           "sha256 (`sha256sum FILE`) so a wrong or damaged file is refused")
        return out


@dataclass(frozen=True)
class TrackingConfig:
    uri: Optional[str] = knob(doc="MLflow tracking URI; null: sqlite file `mlflow.db` in the project")
    artifact_root: Optional[str] = knob(doc="artifact folder for new experiments; null: `mlartifacts/` in the project")
    experiment: str = knob(doc="MLflow experiment name")
    enabled: bool = knob(doc="record runs in MLflow")


@dataclass(frozen=True)
class RayConfig:
    address: Optional[str] = knob(doc="existing Ray cluster (e.g. ray://head:10001 or auto); null: start a local one")
    num_cpus: Optional[int] = knob(ge=1, doc="CPUs for a local Ray instance; null: this machine's count")
    object_store_mb: int = knob(ge=64, doc="object store size of a local Ray instance, MiB")
    storage_path: str = knob(doc="Ray Train run folders (checkpoints), relative to the project root or a URI")


@dataclass(frozen=True)
class ClassifierConfig:
    width: int = knob(ge=4, le=1024, doc="channels of the first stage (doubled per stage)")
    stages: int = knob(ge=1, le=6, doc="residual stages, each halving the resolution")
    dropout: float = knob(ge=0.0, le=0.9, doc="dropout before the head")
    drop_path: float = knob(ge=0.0, le=0.5, doc="stochastic depth rate of the residual blocks")


@dataclass(frozen=True)
class EvaluatorConfig:
    frame: ClassifierConfig = knob(doc="per-frame image classifier (features for FID/IS/KID, perceptual distance)")
    clip: ClassifierConfig = knob(doc="per-clip video classifier (features for FVD-domain)")
    train: TrainConfig = knob(doc="their training recipe (inherits usam/conf/train/default.yaml)")


@dataclass(frozen=True)
class TokenizerArch:
    base_channels: int = knob(ge=4, le=1024, doc="channels at full resolution (x2 per level, capped at x4)")
    res_blocks: int = knob(ge=0, le=8, doc="residual blocks per resolution level")
    spatial_down: Literal[1, 2, 4, 8, 16] = knob(doc="spatial compression (frame side / latent grid side)")
    temporal_down: Literal[1, 2, 4] = knob(doc="temporal compression of the frames after the first")
    temporal_fusion: Literal["conv", "attention", "off"] = knob(
        doc="how the encoder/decoder mix time: causal temporal conv, causal temporal attention, or off (per-frame 2D)"
    )
    residual: bool = knob(doc="residual/skip paths inside encoder and decoder blocks (ablation switch)")

    def check(self) -> list[str]:
        out = []
        if self.temporal_fusion == "off" and self.temporal_down != 1:
            out.append("{path}.temporal_fusion = 'off' is the per-frame 2D tokenizer: set {path}.temporal_down=1")
        if self.temporal_down > self.spatial_down:
            out.append("{path}.temporal_down must not exceed {path}.spatial_down (one level compresses both)")
        return out


@dataclass(frozen=True)
class QuantizerConfig:
    bits: int = knob(ge=1, le=64, doc="d: bits per token (latent channels), each code value +-1/sqrt(d)")
    scales: list[int] = knob(ge=1, le=256, min_len=1, doc="grid side per scale, increasing; the last = frame side / spatial_down")
    multiscale: bool = knob(doc="false: quantize the last scale only (the 'no multi-scale' ablation)")
    clip_frames: Optional[int] = knob(ge=1, doc="latent frames per clip after the first frame (null: one clip)")
    entropy_temperature: float = knob(gt=0.0, le=10.0, doc="temperature of the soft bit probabilities in the entropy term")
    entropy_gamma: float = knob(ge=0.0, le=10.0, doc="weight of the codebook (bit-usage) entropy inside the entropy term")

    def check(self) -> list[str]:
        if any(b <= a for a, b in zip(self.scales, self.scales[1:])):
            return [f"{{path}}.scales = {self.scales} is not strictly increasing: list the grid sides coarse to fine, "
                    "e.g. [1, 2, 4, 8]"]
        return []


@dataclass(frozen=True)
class PerceptualLoss:
    weight: float = knob(ge=0.0, le=100.0, doc="0 turns it off")
    backend: Literal["auto", "lpips", "domain"] = knob(
        doc="lpips: the lpips package on eval.lpips_weights (required); domain: the frame evaluator's feature "
            "distance; auto: lpips when eval.lpips_weights is set, else domain"
    )
    domain_weights: Optional[str] = knob(doc="frame evaluator weights (null: models/evaluators/<data.name>/frame.pt)")


@dataclass(frozen=True)
class AdversarialLoss:
    weight: float = knob(ge=0.0, le=100.0, doc="generator hinge loss weight (0: no discriminator at all)")
    start_step: int = knob(ge=0, doc="optimizer step at which the generator term switches on (the critic trains from 0)")
    adaptive: bool = knob(doc="scale by |grad recon| / |grad adversarial| at the decoder's last layer (VQGAN)")
    max_adaptive: float = knob(gt=0.0, le=1e6, doc="cap of the adaptive factor")
    channels: int = knob(ge=4, le=512, doc="3D PatchGAN width")
    layers: int = knob(ge=1, le=5, doc="3D PatchGAN strided layers")


@dataclass(frozen=True)
class AuxTask:
    weight: float = knob(ge=0.0, le=100.0, doc="loss weight of the auxiliary samples (0: off)")
    share: float = knob(ge=0.0, le=1.0, doc="share of each batch given the corrupted input")
    strength: float = knob(gt=0.0, le=8.0, doc="denoising: noise std (normalized units); super-resolution: downscale factor")


@dataclass(frozen=True)
class ContrastiveLoss:
    weight: float = knob(ge=0.0, le=100.0, doc="InfoNCE weight (0: off: no projection head, no second view, no RNG draw)")
    temperature: float = knob(gt=0.0, le=10.0, doc="temperature of the InfoNCE cosine-similarity softmax")
    dim: int = knob(ge=2, le=4096, doc="width of the projection head (an MLP on the time- and space-pooled latent)")
    shift: int = knob(ge=0, le=16, doc="second view: max spatial shift in pixels per clip (edges replicated)")
    brightness: float = knob(ge=0.0, lt=1.0, doc="second view: max relative brightness change per clip")


@dataclass(frozen=True)
class PredictiveLoss:
    weight: float = knob(ge=0.0, le=100.0, doc="next-latent-frame MSE weight (0: off: no predictor head)")
    kernel: int = knob(ge=1, le=8, doc="latent frames the causal predictor sees (its temporal kernel)")
    hidden: int = knob(ge=1, le=4096, doc="channels of the predictor's hidden layer")
    detach_target: bool = knob(
        doc="stop the gradient through the target frame (true: the encoder is not pulled towards latents that "
            "do not change in time; it learns only to make the past informative)"
    )


@dataclass(frozen=True)
class TokenizerLoss:
    l1: float = knob(ge=0.0, le=100.0, doc="L1 reconstruction weight")
    l2: float = knob(ge=0.0, le=100.0, doc="L2 reconstruction weight")
    perceptual: PerceptualLoss = knob()
    adversarial: AdversarialLoss = knob()
    temporal: float = knob(ge=0.0, le=100.0, doc="temporal consistency: |change of recon - change of input| between frames")
    denoise: AuxTask = knob(doc="multi-task auxiliary: the clean clip from a noised input")
    super_resolution: AuxTask = knob(doc="multi-task auxiliary: the full-resolution clip from a downsampled input")
    commitment: float = knob(ge=0.0, le=100.0, doc="BSQ commitment weight (seed: 0.25)")
    entropy: float = knob(ge=0.0, le=100.0, doc="BSQ entropy weight (seed: 0.1)")
    contrastive: ContrastiveLoss = knob(doc="auxiliary: InfoNCE between two views of each clip (batch negatives)")
    predictive: PredictiveLoss = knob(doc="auxiliary: predict the next pre-quantization latent frame from earlier ones")

    def check(self) -> list[str]:
        if self.l1 + self.l2 == 0:
            return ["{path}.l1 and {path}.l2 are both 0: the tokenizer needs a reconstruction loss"]
        if self.denoise.share + self.super_resolution.share > 1:
            return ["{path}.denoise.share + {path}.super_resolution.share exceed 1"]
        return []


@dataclass(frozen=True)
class TokenizerEval:
    panel_videos: int = knob(ge=0, le=64, doc="validation videos in the reconstruction panel (PNG + GIF) per epoch; 0: none")


@dataclass(frozen=True)
class TokenizerConfig:
    arch: TokenizerArch = knob()
    quantizer: QuantizerConfig = knob()
    loss: TokenizerLoss = knob()
    eval: TokenizerEval = knob()
    train: TrainConfig = knob(doc="its training recipe (inherits usam/conf/train/default.yaml)")

    def check(self) -> list[str]:
        if self.loss.contrastive.weight > 0 and self.train.batch_size < 2:
            return ["{path}.loss.contrastive needs negatives: set {path}.train.batch_size >= 2 (the other clips of "
                    "a batch are the negatives), or {path}.loss.contrastive.weight=0"]
        return []


@dataclass(frozen=True)
class Config:
    seed: int = knob(ge=0, le=SEED_MAX, doc="run seed: python, numpy, torch, DataLoader and workers")
    seeds: list[int] = knob(ge=0, le=SEED_MAX, min_len=1, doc="the seeds the pipeline trains every generator with (evaluators "
                                                 "and tokenizers train once, with seed)")
    data: DataConfig = knob()
    preprocess: PreprocessConfig = knob()
    model: ModelConfig = knob()
    train: TrainConfig = knob()
    eval: EvalConfig = knob()
    tracking: TrackingConfig = knob()
    ray: RayConfig = knob()
    evaluator: EvaluatorConfig = knob()
    tokenizer: TokenizerConfig = knob()
    baselines: BaselinesConfig = knob()
    debug: DebugConfig = knob()

    def check(self) -> list[str]:
        clip = self.preprocess.augment.clip_frames
        if clip is not None and clip > self.data.frames:
            return [f"preprocess.augment.clip_frames = {clip} > data.frames = {self.data.frames}: a clip must fit"]
        return self._check_tokenizer()

    def _check_tokenizer(self) -> list[str]:
        """Settings that contradict each other whatever the data (the schedule is checked against the
        frames by the tokenizer task, before training)."""
        out = []
        if self.tokenizer.loss.perceptual.backend == "lpips" and self.tokenizer.loss.perceptual.weight > 0 \
                and not self.eval.lpips_weights:
            out.append("tokenizer.loss.perceptual.backend = 'lpips' needs eval.lpips_weights: point it at a local "
                       "torchvision AlexNet state dict (with eval.lpips_sha256), or use backend=auto/domain")
        return out


TRAIN_SECTIONS = {"evaluator_frame": "evaluator.train", "evaluator_clip": "evaluator.train",
                  "tokenizer": "tokenizer.train"}


def train_section(task: str) -> str:
    """The config section holding ``task``'s training recipe (what its ``train_cfg`` reads); ``train`` for
    USAM and the baselines."""
    return TRAIN_SECTIONS.get(task, "train")
