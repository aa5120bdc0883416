"""The whole config tree.

Key names and defaults follow PySlowFast so that its YAML files for the reversible models load
unchanged, on the same CfgNode (fvcore's). Only the sections these models use are kept; keys revvit
adds are marked "(revvit)". Every key holds one type (None where the comment gives None a meaning), so
yacs' merge_from_list works on each.
Keys marked "accepted for PySlowFast YAML files; not read" change nothing here; where a value other
than the default would change what PySlowFast does, the config gate (validate.py) refuses it.
"""

from fvcore.common.config import CfgNode

_C = CfgNode()

# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------
_C.TRAIN = CfgNode()
_C.TRAIN.ENABLE = True  # run training
_C.TRAIN.DATASET = "kinetics"  # dataset name in DATASET_REGISTRY
_C.TRAIN.BATCH_SIZE = 64  # batch of one machine, split over NUM_GPUS (x NUM_SHARDS = global)
_C.TRAIN.EVAL_PERIOD = 10  # evaluate on the val split every this many epochs
_C.TRAIN.CHECKPOINT_PERIOD = 10  # save a checkpoint every this many epochs
_C.TRAIN.AUTO_RESUME = True  # resume from the newest checkpoint in OUTPUT_DIR/checkpoints
_C.TRAIN.CHECKPOINT_FILE_PATH = ""  # initial weights (ours or an official .pyth)
_C.TRAIN.CHECKPOINT_TYPE = "pytorch"  # only "pytorch" is supported
_C.TRAIN.CHECKPOINT_INFLATE = False  # PySlowFast: inflate 2-D conv weights to 3-D when loading (not implemented; True refused)
_C.TRAIN.CHECKPOINT_EPOCH_RESET = False  # start from epoch 0 when initialising from a checkpoint
_C.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN = ()  # substrings removed from checkpoint keys
_C.TRAIN.CHECKPOINT_IN_INIT = False  # PySlowFast: convert image <-> video weights when loading (not implemented; True refused)
_C.TRAIN.MIXED_PRECISION = False  # autocast in TRAIN.MIXED_PRECISION_DTYPE (training and testing)
_C.TRAIN.MIXED_PRECISION_DTYPE = "auto"  # (revvit) auto: bfloat16 where the device has it, else float16; float16 adds a GradScaler
_C.TRAIN.KILL_LOSS_EXPLOSION_FACTOR = 0.0  # stop when loss exceeds this x recent mean (0: off)
_C.TRAIN.STOP_GRACE_PERIOD = 20.0  # (revvit) seconds after SIGTERM/SIGUSR1/SIGINT to reach a step boundary and save, then exit at once

# ---------------------------------------------------------------------------------------------
# Augmentation (DeiT recipe; applied through timm / torchvision).
# ---------------------------------------------------------------------------------------------
_C.AUG = CfgNode()
_C.AUG.ENABLE = False  # use the RandAugment / random erasing recipe in training
_C.AUG.NUM_SAMPLE = 1  # repeated augmentation: clips per video per item
_C.AUG.COLOR_JITTER = 0.4  # colour jitter strength (unused when RandAugment is on)
_C.AUG.AA_TYPE = "rand-m9-mstd0.5-inc1"  # timm auto-augment policy string
_C.AUG.INTERPOLATION = "bicubic"  # resize interpolation for training crops
_C.AUG.RE_PROB = 0.25  # random erasing probability
_C.AUG.RE_MODE = "pixel"  # random erasing fill mode
_C.AUG.RE_COUNT = 1  # random erasing count
_C.AUG.RE_SPLIT = False  # PySlowFast: do not erase the first (clean) AugMix split (not implemented; True refused)
_C.AUG.ON_DEVICE = None  # (revvit) RandAugment, erasing, normalisation, mixup on the training device: True | False | None (on when training on CUDA)

# ---------------------------------------------------------------------------------------------
# Mixup / CutMix (timm Mixup).
# ---------------------------------------------------------------------------------------------
_C.MIXUP = CfgNode()
_C.MIXUP.ENABLE = False  # apply mixup / cutmix on training batches
_C.MIXUP.ALPHA = 0.8  # mixup alpha
_C.MIXUP.CUTMIX_ALPHA = 1.0  # cutmix alpha
_C.MIXUP.PROB = 1.0  # probability of mixing a batch
_C.MIXUP.SWITCH_PROB = 0.5  # probability of cutmix instead of mixup when both are on
_C.MIXUP.LABEL_SMOOTH_VALUE = 0.1  # label smoothing of the mixed targets

# ---------------------------------------------------------------------------------------------
# Testing.
# ---------------------------------------------------------------------------------------------
_C.TEST = CfgNode()
_C.TEST.ENABLE = True  # run testing after training (or alone)
_C.TEST.DATASET = "kinetics"  # dataset name in DATASET_REGISTRY
_C.TEST.BATCH_SIZE = 8  # test batch of one machine, split over NUM_GPUS
_C.TEST.CHECKPOINT_FILE_PATH = ""  # checkpoint to test; empty: newest in OUTPUT_DIR
_C.TEST.NUM_ENSEMBLE_VIEWS = 10  # uniformly spaced clips per video
_C.TEST.NUM_SPATIAL_CROPS = 3  # spatial crops per clip (1: centre, 3: left/centre/right)
_C.TEST.CHECKPOINT_TYPE = "pytorch"  # only "pytorch" is supported
_C.TEST.SAVE_RESULTS_PATH = ""  # file (under OUTPUT_DIR) for per-sample predictions
_C.TEST.NUM_TEMPORAL_CLIPS = []  # accepted for PySlowFast YAML files; not read ([] or [NUM_ENSEMBLE_VIEWS]; others refused)

# ---------------------------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------------------------
_C.MODEL = CfgNode()
_C.MODEL.ARCH = "mvit"  # accepted for PySlowFast YAML files (the official Kinetics file says "slow"); not read: MODEL_NAME picks the model
_C.MODEL.MODEL_NAME = "MViT"  # class in MODEL_REGISTRY
_C.MODEL.NUM_CLASSES = 400  # classifier outputs
_C.MODEL.LOSS_FUNC = "cross_entropy"  # cross_entropy | soft_cross_entropy | bce | bce_logit (both bce names take logits)
_C.MODEL.DROPOUT_RATE = 0.5  # dropout before the head projection
_C.MODEL.HEAD_ACT = "softmax"  # scores of testing and prediction from the logits (the model returns logits)
_C.MODEL.ACT_CHECKPOINT = False  # activation checkpointing of non-reversible blocks
_C.MODEL.DETACH_FINAL_FC = False  # train only the final projection
_C.MODEL.FP16_ALLREDUCE = False  # compress DDP gradients to fp16
_C.MODEL.FSDP = False  # (revvit) shard weights, grads and optimizer state over processes (FSDP2, one unit per block) instead of DDP
_C.MODEL.PRETRAINED = ""  # (revvit) official weights by name (revvit.list_models(pretrained=True)); head new if classes differ

# ---------------------------------------------------------------------------------------------
# MViT / ViT.
# ---------------------------------------------------------------------------------------------
_C.MVIT = CfgNode()
_C.MVIT.MODE = "conv"  # attention pooling: conv | avg | max
_C.MVIT.POOL_FIRST = False  # pool before the q/k/v projections (not implemented; True refused)
_C.MVIT.CLS_EMBED_ON = True  # class token (reversible models must not have one)
_C.MVIT.PATCH_KERNEL = [3, 7, 7]  # patch-embedding conv kernel
_C.MVIT.PATCH_STRIDE = [2, 4, 4]  # patch-embedding conv stride
_C.MVIT.PATCH_PADDING = [2, 4, 4]  # patch-embedding conv padding
_C.MVIT.PATCH_2D = False  # 2-D patch embedding (images) instead of 3-D (video)
_C.MVIT.EMBED_DIM = 96  # width of the first stage
_C.MVIT.NUM_HEADS = 1  # heads of the first stage
_C.MVIT.MLP_RATIO = 4.0  # MLP hidden width / block width
_C.MVIT.QKV_BIAS = True  # bias in the q/k/v projections
_C.MVIT.DROPPATH_RATE = 0.1  # stochastic depth, linearly increased to this over depth
_C.MVIT.LAYER_SCALE_INIT_VALUE = 0.0  # layer scale (0: off); non-reversible blocks only
_C.MVIT.DEPTH = 16  # number of blocks
_C.MVIT.NORM = "layernorm"  # only layernorm
_C.MVIT.DIM_MUL = []  # [[block, multiplier], ...]: width grows at these blocks
_C.MVIT.HEAD_MUL = []  # [[block, multiplier], ...]: heads grow at these blocks
_C.MVIT.POOL_KV_STRIDE = []  # [[block, st, sh, sw], ...]: K/V pooling strides
_C.MVIT.POOL_KV_STRIDE_ADAPTIVE = None  # initial K/V stride, divided by each Q stride (None: POOL_KV_STRIDE)
_C.MVIT.POOL_Q_STRIDE = []  # [[block, st, sh, sw], ...]: Q pooling (resolution drops)
_C.MVIT.POOL_KVQ_KERNEL = None  # pooling kernel; None: stride + 1 where stride > 1
_C.MVIT.ZERO_DECAY_POS_CLS = True  # no weight decay on position / class embeddings
_C.MVIT.NORM_STEM = False  # LayerNorm after the patch embedding
_C.MVIT.SEP_POS_EMBED = False  # separate spatial and temporal position embeddings
_C.MVIT.DROPOUT_RATE = 0.0  # dropout inside attention / MLP
_C.MVIT.USE_ABS_POS = True  # absolute position embeddings
_C.MVIT.REL_POS_SPATIAL = False  # decomposed relative positions, spatial (not implemented; True refused)
_C.MVIT.REL_POS_TEMPORAL = False  # decomposed relative positions, temporal (not implemented; True refused)
_C.MVIT.REL_POS_ZERO_INIT = False  # accepted for PySlowFast YAML files; not read (relative positions are not implemented; True refused)
_C.MVIT.RESIDUAL_POOLING = False  # add pooled Q to the attention output
_C.MVIT.DIM_MUL_IN_ATT = False  # grow width in attention instead of the MLP (non-reversible)
_C.MVIT.SEPARATE_QKV = False  # separate q, k, v Linears instead of one fused qkv
_C.MVIT.HEAD_INIT_SCALE = 1.0  # scale of the head's initial weights
_C.MVIT.USE_MEAN_POOLING = False  # mean over tokens before the final norm
_C.MVIT.USE_FIXED_SINCOS_POS = False  # frozen sin-cos position embeddings (not implemented; True refused)

_C.MVIT.REV = CfgNode()
_C.MVIT.REV.ENABLE = False  # reversible encoder trained through RevBackProp
_C.MVIT.REV.RESPATH_FUSE = "concat"  # fusion of the two streams after the encoder
_C.MVIT.REV.BUFFER_LAYERS = []  # stage-transition (non-reversible) block indices
_C.MVIT.REV.RES_PATH = "conv"  # residual pooling of a transition: conv (shares pool_q) | max
_C.MVIT.REV.PRE_Q_FUSION = "avg"  # fusion of the two streams entering a transition
# "block": one mask per reversible block shared by F and G, a transition drops its whole output (official)
_C.MVIT.REV.DROP_PATH_MODE = "block"  # (revvit) drop path: block (official) | branch (F, G masks drawn apart; residuals kept)

# ---------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------
_C.DATA = CfgNode()
_C.DATA.PATH_TO_DATA_DIR = ""  # data root (ImageNet class folders or Kinetics CSV lists)
_C.DATA.PATH_LABEL_SEPARATOR = " "  # separator between path and label in CSV lists
_C.DATA.PATH_PREFIX = ""  # prefix joined to each video path
_C.DATA.NUM_FRAMES = 8  # frames per clip
_C.DATA.SAMPLING_RATE = 8  # frame step within a clip, at TARGET_FPS
_C.DATA.MEAN = [0.45, 0.45, 0.45]  # per-channel mean on [0, 1] pixels
_C.DATA.STD = [0.225, 0.225, 0.225]  # per-channel std on [0, 1] pixels
_C.DATA.INPUT_CHANNEL_NUM = [3, 3]  # input channels per pathway (first is used)
_C.DATA.TRAIN_JITTER_SCALES = [256, 320]  # short-side scale jitter range for video training
_C.DATA.TRAIN_JITTER_SCALES_RELATIVE = []  # random-resized-crop area range; overrides scales
_C.DATA.TRAIN_JITTER_ASPECT_RELATIVE = []  # random-resized-crop aspect range
_C.DATA.TRAIN_CROP_SIZE = 224  # training crop
_C.DATA.TEST_CROP_SIZE = 256  # test crop
_C.DATA.TARGET_FPS = 30  # frames are sampled as if the video had this frame rate
_C.DATA.DECODING_BACKEND = "torchvision"  # pyav; "torchvision" maps to PyAV as well
_C.DATA.DECODING_SHORT_SIZE = 256  # accepted for PySlowFast YAML files; not read (frames are resized by the transforms)
_C.DATA.INV_UNIFORM_SAMPLE = False  # sample scale inverse-uniformly
_C.DATA.RANDOM_FLIP = True  # random horizontal flip in training
_C.DATA.MULTI_LABEL = False  # accepted for PySlowFast YAML files; not read (True refused)
_C.DATA.ENSEMBLE_METHOD = "sum"  # view ensembling: sum | max
_C.DATA.REVERSE_INPUT_CHANNEL = False  # RGB -> BGR
_C.DATA.IN_VAL_CROP_RATIO = 0.875  # ImageNet val: resize short side to crop / ratio
_C.DATA.USE_OFFSET_SAMPLING = False  # test clips span the whole video (first at start, last at end)
_C.DATA.DEMO = ""  # (revvit) "" | "digits" | "moving_digits": build and read a demo set instead of PATH_TO_DATA_DIR
_C.DATA.DEMO_CACHE_DIR = "~/.cache/revvit"  # (revvit) where demo sets are built on first use

# ---------------------------------------------------------------------------------------------
# Solver.
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CfgNode()
_C.SOLVER.BASE_LR = 0.1  # peak learning rate (per NUM_SHARDS if scaled)
_C.SOLVER.LR_POLICY = "cosine"  # cosine | steps_with_relative_lrs | constant
_C.SOLVER.COSINE_END_LR = 0.0  # final learning rate of the cosine policy
_C.SOLVER.GAMMA = 0.1  # accepted for PySlowFast YAML files; not read by any LR_POLICY revvit accepts
_C.SOLVER.STEP_SIZE = 1  # accepted for PySlowFast YAML files; not read by any LR_POLICY revvit accepts
_C.SOLVER.STEPS = []  # epochs at which steps_with_relative_lrs changes the rate
_C.SOLVER.LRS = []  # relative rates of steps_with_relative_lrs
_C.SOLVER.MAX_EPOCH = 300  # training epochs
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.DAMPENING = 0.0  # SGD dampening
_C.SOLVER.NESTEROV = True  # SGD Nesterov momentum
_C.SOLVER.WEIGHT_DECAY = 1e-4  # weight decay
_C.SOLVER.WARMUP_FACTOR = 0.1  # accepted for PySlowFast YAML files; not read (warmup starts at WARMUP_START_LR, as in PySlowFast)
_C.SOLVER.WARMUP_EPOCHS = 0.0  # linear warmup length in epochs
_C.SOLVER.WARMUP_START_LR = 0.01  # learning rate at the start of warmup
_C.SOLVER.OPTIMIZING_METHOD = "sgd"  # sgd | adam | adamw
_C.SOLVER.BASE_LR_SCALE_NUM_SHARDS = False  # multiply BASE_LR (and warmup/end) by NUM_SHARDS
_C.SOLVER.COSINE_AFTER_WARMUP = False  # cosine starts at the end of warmup
_C.SOLVER.ZERO_WD_1D_PARAM = False  # no weight decay on 1-D parameters (biases, norms)
_C.SOLVER.CLIP_GRAD_VAL = None  # clip gradients elementwise at this value (None: no clipping)
_C.SOLVER.CLIP_GRAD_L2NORM = None  # clip the global gradient L2 norm at this value (None: no clipping)
_C.SOLVER.LAYER_DECAY = 1.0  # accepted for PySlowFast YAML files; not read (values other than 1.0 refused)
_C.SOLVER.BETAS = (0.9, 0.999)  # Adam betas

# ---------------------------------------------------------------------------------------------
# Data loader.
# ---------------------------------------------------------------------------------------------
_C.DATA_LOADER = CfgNode()
_C.DATA_LOADER.NUM_WORKERS = 8  # loader workers per process (0: none; -1: the machine's cores / processes, at most 16)
_C.DATA_LOADER.PIN_MEMORY = True  # pinned host memory (used only with CUDA)
_C.DATA_LOADER.ENABLE_MULTI_THREAD_DECODE = False  # threaded PyAV decoding
_C.DATA_LOADER.NUM_RETRIES = 10  # (revvit) tries with another sample before a bad one is fatal
_C.DATA_LOADER.PREFETCH_FACTOR = 2  # (revvit) batches each worker prepares ahead (torch's default)
_C.DATA_LOADER.GPU_DECODE = False  # (revvit) decode training JPEGs on the GPU (AUG.ON_DEVICE, CUDA): workers read bytes only

# ---------------------------------------------------------------------------------------------
# TensorBoard.
# ---------------------------------------------------------------------------------------------
_C.TENSORBOARD = CfgNode()
_C.TENSORBOARD.ENABLE = False  # write TensorBoard scalars
_C.TENSORBOARD.LOG_DIR = ""  # sub-directory of OUTPUT_DIR; empty: runs-<dataset>

# ---------------------------------------------------------------------------------------------
# Misc.
# ---------------------------------------------------------------------------------------------
_C.NUM_GPUS = 1  # processes per machine (CPU processes when CUDA is absent; 0: one, no DDP)
_C.NUM_SHARDS = 1  # machines
_C.SHARD_ID = 0  # index of this machine
_C.OUTPUT_DIR = "./output"  # logs, checkpoints, stats; git-ignored, like PySlowFast's ./tmp (each shipped config names its own)
_C.RNG_SEED = 1  # seed of python, numpy and torch
_C.LOG_PERIOD = 10  # iterations between log lines
_C.LOG_ITER_STATS_STDOUT = False  # (revvit) in a terminal, also print per-iteration json_stats (always in stdout.log)
_C.LOG_MODEL_INFO = True  # log parameters and FLOPs at start
_C.DIST_BACKEND = "nccl"  # backend on CUDA; CPU processes always use gloo
_C.DETERMINISTIC = False  # (revvit) True: no TF32, cudnn.benchmark off, cudnn.deterministic on (CUDA)
_C.DIST_TIMEOUT = 1800  # (revvit) seconds a collective waits for the other processes before the job stops (torch's default)
_C.DATA_LOADER.TIMEOUT = 600  # (revvit) seconds a loader worker may take for one batch before the run stops (0: no limit)


def get_defaults():
    """A fresh copy of the defaults, so callers can never mutate the module-level tree."""
    return _C.clone()
