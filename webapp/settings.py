"""All settings, read from the environment in one place.

With nothing set, everything runs embedded under var/: SQLite, files on disk,
a filesystem Celery broker, and a tiny generated Wan checkpoint. DATABASE_URL,
REDIS_URL, AWS_STORAGE_BUCKET_NAME and WAN_MODEL_PATH switch to the real
services. DJANGO_ENV=production refuses to start without a SECRET_KEY.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default=None):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def env_list(name, default=""):
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


ENVIRONMENT = env("DJANGO_ENV", "local")
PRODUCTION = ENVIRONMENT == "production"
VAR_DIR = Path(env("VAR_DIR", BASE_DIR / "var"))

SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when DJANGO_ENV=production")
    SECRET_KEY = "local-development-only-not-a-secret"
DEBUG = env_bool("DEBUG", default=not PRODUCTION)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY")
# Proxies whose X-Forwarded-For is trusted for the client's address (sign-in throttles): none unless
# behind the TLS proxy, which must append the address it saw; a client can send any header itself.
NUM_PROXIES = int(env("NUM_PROXIES", 1 if BEHIND_TLS_PROXY else 0))
if PRODUCTION:
    # Serve behind a TLS-terminating proxy; SECURE_COOKIES=false only for a trusted plain-http network.
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    if BEHIND_TLS_PROXY:  # only a proxy that overwrites X-Forwarded-Proto may be trusted
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # Served over TLS (secure cookies): browsers keep to https for a year. HSTS is sent on https
    # requests only, so behind a proxy it needs BEHIND_TLS_PROXY.
    SECURE_HSTS_SECONDS = int(env("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if SESSION_COOKIE_SECURE else 0))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS")
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT")
SILENCED_SYSTEM_CHECKS = [
    # The TLS proxy redirects http to https (compose's health checks reach the web port over plain
    # http); SECURE_SSL_REDIRECT=true where no proxy does.
    "security.W008",
    # HSTS for every subdomain of the host, or on browsers' preload lists, binds more than this
    # service: the operator's choice (SECURE_HSTS_INCLUDE_SUBDOMAINS, SECURE_HSTS_PRELOAD).
    "security.W005",
    "security.W021",
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as static files: the docs load nothing from a CDN
    "corsheaders",
    "webapp.core",
    "webapp.loras",
    "webapp.prompts",
    "webapp.jobs",
    "webapp.sweeps",
]
MIDDLEWARE = [
    # First: a browser's preflight (OPTIONS) is answered here, before any view asks for credentials.
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "webapp.core.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}", conn_max_age=60, conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web and worker processes share the file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "queue"
STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", VAR_DIR / "static"))  # the web image collects into its own, outside /data
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", VAR_DIR / "media"))
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME")
if AWS_STORAGE_BUCKET_NAME:
    AWS_S3_ENDPOINT_URL = env("AWS_S3_ENDPOINT_URL")
    AWS_S3_REGION_NAME = env("AWS_S3_REGION_NAME")
    AWS_S3_SIGNATURE_VERSION = env("AWS_S3_SIGNATURE_VERSION", "s3v4")
    AWS_DEFAULT_ACL = None
    AWS_QUERYSTRING_AUTH = env_bool("AWS_QUERYSTRING_AUTH", True)
    AWS_S3_FILE_OVERWRITE = False
    _files = {"BACKEND": "storages.backends.s3.S3Storage"}
else:
    _files = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _files,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- pages: Content-Security-Policy (webapp/core/csp.py) ---------------------------
# Only this site's scripts run (htmx from /static; no inline script, no eval); inline styles are
# allowed (style="" attributes, htmx's indicator style, the admin's). Videos, posters and WebPs may
# be presigned URLs of the bucket, which the output links redirect to.
if not AWS_STORAGE_BUCKET_NAME:
    _storage_origins = []
elif AWS_S3_ENDPOINT_URL:  # MinIO and the like: path-style URLs on the endpoint
    _storage_origins = ["{0.scheme}://{0.netloc}".format(urlsplit(AWS_S3_ENDPOINT_URL))]
else:
    _storage_origins = [f"https://{AWS_STORAGE_BUCKET_NAME}.s3.amazonaws.com"]
    if AWS_S3_REGION_NAME:
        _storage_origins.append(f"https://{AWS_STORAGE_BUCKET_NAME}.s3.{AWS_S3_REGION_NAME}.amazonaws.com")
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:", "blob:", *_storage_origins],
    "media-src": ["'self'", "blob:", *_storage_origins],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
# The API docs (/api/docs/, /api/redoc/) come from drf-spectacular-sidecar's static files, and Swagger UI's
# start script from /api/docs/?script= (SpectacularSwaggerSplitView): the one policy above covers them.
# ReDoc runs its search index in a worker it starts from a blob: URL.
SECURE_CSP_OVERRIDES = {"redoc": {**SECURE_CSP, "worker-src": ["'self'", "blob:"]}}  # by URL name
FILE_UPLOAD_MAX_MEMORY_SIZE = 16 * 2**20
DATA_UPLOAD_MAX_MEMORY_SIZE = 16 * 2**20

# --- queue --------------------------------------------------------------------
REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    # Ten priority lists, drained highest first; a job's message is restored after the visibility
    # timeout at the latest, but the reconciler requeues jobs of dead workers long before that.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": 4 * 3600,
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
    }
else:
    _broker = VAR_DIR / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    # control_folder holds kombu's exchange bindings; its default is "control" in the current directory.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker / "out"),
        "data_folder_out": str(_broker / "out"),
        "processed_folder": str(_broker / "processed"),
        "control_folder": str(_broker / "control"),
        "store_processed": False,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- rendering ----------------------------------------------------------------
WAN_MODEL_PATH = env("WAN_MODEL_PATH", str(VAR_DIR / "models" / "wan21-tiny"))
WAN_DEVICE = env("WAN_DEVICE")  # default: cuda when available
WAN_LOW_MEMORY = env_bool("WAN_LOW_MEMORY")  # smaller cards: models visit the GPU in turn, tiled VAE decode
# Latency mode for a worker that owns two GPUs: each step's unconditional pass runs here in parallel.
WAN_CFG_DEVICE = env("WAN_CFG_DEVICE")
# Run each job across these GPUs ("cuda:0,cuda:1,cuda:2,cuda:3": one follower process per extra GPU,
# diffusers' Ulysses context parallelism); excludes WAN_CFG_DEVICE, fast mode, WAN_EXACT_COMPILE, step caching.
WAN_CP_DEVICES = env_list("WAN_CP_DEVICES")
# Jobs with speed "fast" use an fp8 copy of the transformer (~15 GB more on the card; off in low-memory
# mode). Off: they render exactly. Its blocks compile on CUDA on first use unless WAN_FAST_COMPILE=0.
WAN_FAST_MODE = env_bool("WAN_FAST_MODE", True)
WAN_FAST_COMPILE = env_bool("WAN_FAST_COMPILE", True)
# Fast mode's self-attention: "auto" (8-bit cuDNN FP8 SDPA on Hopper with nvidia-cudnn-frontend, else bf16),
# "fp8" or "bf16".
WAN_FAST_ATTENTION = env("WAN_FAST_ATTENTION", "auto")
# CUDA workers compile exact mode's blocks (once per video size) and take each job's LoRAs through one
# stack adapter, equal to peft's adapters within rounding: 1.25x end to end (docs/benchmarks.md).
# Off, or on a CPU (nothing to compile): peft's adapters, bit for bit the reference path.
WAN_EXACT_COMPILE = env_bool("WAN_EXACT_COMPILE", True)
# A folder (a volume shared by a host's workers) for torch's compile caches and portable artifacts: a worker
# that finds compile work of an earlier one there is ready in seconds (workers/pipeline/compile_cache.py).
WAN_COMPILE_CACHE = env("WAN_COMPILE_CACHE", "")
WAN_WARMUP = env_list("WAN_WARMUP")  # sizes "WxHxF" to compile both speeds for at worker start
LORA_ROOT = Path(env("LORA_ROOT", VAR_DIR / "loras"))
LORA_CACHE_DIR = Path(env("LORA_CACHE_DIR", VAR_DIR / "lora-cache"))
LORA_MAX_UPLOAD_BYTES = int(env("LORA_MAX_UPLOAD_BYTES", 2 * 2**30))
# A zipped run folder: the uncompressed size of its checkpoints and config together.
RUN_ARCHIVE_MAX_BYTES = int(env("RUN_ARCHIVE_MAX_BYTES", 16 * 2**30))
LORA_GPU_BUDGET_BYTES = int(env("LORA_GPU_BUDGET_BYTES", 8 * 2**30))
# LoRAs by URL: off unless hosts are allowed; https only, size-capped, public addresses only.
LORA_URL_ALLOWED_HOSTS = env_list("LORA_URL_ALLOWED_HOSTS")
LORA_URL_MAX_BYTES = int(env("LORA_URL_MAX_BYTES", 2 * 2**30))
LORA_URL_TIMEOUT_S = float(env("LORA_URL_TIMEOUT_S", 30))
# The draft preset's step-distill LoRA (e.g. LightX2V's Wan2.1-T2V-14B StepDistill-CfgDistill), named as a job
# names a LoRA (id, name, sha256, path under LORA_ROOT, URL); empty: "preset": "draft" is DRAFT_NOT_CONFIGURED.
DRAFT_LORA = env("DRAFT_LORA", "")
DRAFT_LORA_MULTIPLIER = float(env("DRAFT_LORA_MULTIPLIER", 1.0))
JOB_PROGRESS_INTERVAL_S = float(env("JOB_PROGRESS_INTERVAL_S", 1.0))
# Job webhooks (webapp/jobs/webhooks.py): https to public addresses only, except hosts named here exactly
# (a receiver on the local network or loopback; http allowed for them too).
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS")
WEBHOOK_TIMEOUT_S = float(env("WEBHOOK_TIMEOUT_S", 10))
WEBHOOK_RETRY_BASE_S = float(env("WEBHOOK_RETRY_BASE_S", 10))  # doubling after each failure...
WEBHOOK_RETRY_MAX_S = float(env("WEBHOOK_RETRY_MAX_S", 600))  # ...up to this far apart...
WEBHOOK_RETRY_FOR_S = float(env("WEBHOOK_RETRY_FOR_S", 3600))  # ...until the event is this old: failed
WEBHOOK_PROGRESS_INTERVAL_S = float(env("WEBHOOK_PROGRESS_INTERVAL_S", 10))
WEBHOOK_PUBLIC_URL = env("WEBHOOK_PUBLIC_URL", "")  # prefixes the output URLs in bodies ("https://render.example.com")
JOB_HEARTBEAT_S = float(env("JOB_HEARTBEAT_S", 10))
JOB_STALE_AFTER_S = float(env("JOB_STALE_AFTER_S", 120))  # no heartbeat for this long: the worker is gone
JOB_MAX_ATTEMPTS = int(env("JOB_MAX_ATTEMPTS", 3))
# A job's time limit scales with its work: base + per step x its denoising steps, checked at every step
# (TIMEOUT); past it by the grace a stuck worker exits and is replaced. 20 default prompts: about 17 h.
JOB_TIME_LIMIT_BASE_S = float(env("JOB_TIME_LIMIT_BASE_S", 900))
JOB_TIME_LIMIT_PER_STEP_S = float(env("JOB_TIME_LIMIT_PER_STEP_S", 120))
JOB_TIME_LIMIT_GRACE_S = float(env("JOB_TIME_LIMIT_GRACE_S", 600))
JOB_RECONCILE_GRACE_S = float(env("JOB_RECONCILE_GRACE_S", 30))
JOB_RECONCILE_INTERVAL_S = float(env("JOB_RECONCILE_INTERVAL_S", 60))
CELERY_BEAT_SCHEDULE = {"reconcile-jobs": {"task": "workers.reconcile_jobs", "schedule": JOB_RECONCILE_INTERVAL_S}}
JOB_MAX_PROMPTS = int(env("JOB_MAX_PROMPTS", 100))  # per job and per prompt set, through every door
# Priorities from this one up (to 9) are for staff: 8 leaves 0-7 to everyone; 10 opens all to everyone.
PRIORITY_STAFF_ONLY_FROM = int(env("PRIORITY_STAFF_ONLY_FROM", 8))
if not 1 <= PRIORITY_STAFF_ONLY_FROM <= 10:
    raise ImproperlyConfigured("PRIORITY_STAFF_ONLY_FROM must be 1 to 10")
PROMPT_MAX_CHARS = int(env("PROMPT_MAX_CHARS", 4000))
# Sweeps (webapp/sweeps/): at most this many cells (jobs) per sweep; a composition of its grids that has
# not finished after SWEEP_COMPOSE_STALE_S (its CPU worker died) is taken over by the next settle.
SWEEP_MAX_CELLS = int(env("SWEEP_MAX_CELLS", 64))
SWEEP_COMPOSE_STALE_S = float(env("SWEEP_COMPOSE_STALE_S", 1800))

# --- API ----------------------------------------------------------------------
# Throttle counters must be shared by every web process: Redis when there is one.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}
SUBMIT_RATE = env("SUBMIT_RATE", "120/min")
# CORS for a browser frontend on another origin (django-cors-headers): only the API paths, only these
# origins ("https://app.example.com", comma-separated; none by default). Clients authenticate with the
# Authorization header (a token), so no cookies cross origins.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CORS_URLS_REGEX = r"^/(api|v1)/"
CORS_ALLOW_HEADERS = ["accept", "authorization", "content-type", "idempotency-key", "range"]
CORS_EXPOSE_HEADERS = ["Content-Disposition", "Content-Range", "Accept-Ranges", "Retry-After"]
CORS_PREFLIGHT_MAX_AGE = 3600
# Failed sign-ins (token endpoint and sign-in page) per username and per client address (webapp/core/auth.py).
SIGN_IN_RATE_PER_USERNAME = env("SIGN_IN_RATE_PER_USERNAME", "10/min")
SIGN_IN_RATE_PER_ADDRESS = env("SIGN_IN_RATE_PER_ADDRESS", "30/min")
MAX_QUEUED_JOBS_PER_USER = int(env("MAX_QUEUED_JOBS_PER_USER", 500))
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "webapp.core.parsers.StorableJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "webapp.core.errors.api_exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "submit": SUBMIT_RATE,
        "sign_in_username": SIGN_IN_RATE_PER_USERNAME,
        "sign_in_address": SIGN_IN_RATE_PER_ADDRESS,
    },
    "NUM_PROXIES": NUM_PROXIES,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Wan LoRA render queue",
    "DESCRIPTION": "Render videos with Wan 2.1 T2V 14B and ai-toolkit LoRAs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "SchedulerEnum": "webapp.jobs.models.Scheduler",
        "VisibilityEnum": "webapp.loras.models.Visibility",
        "RequestStatusEnum": "webapp.jobs.compat.REQUEST_STATUSES",
        "JobStatusEnum": "webapp.jobs.models.JobStatus",  # a job's and a sweep cell's
        "SweepStatusEnum": "webapp.sweeps.models.SweepStatus",
        "SweepAxisFieldEnum": "webapp.sweeps.models.AXIS_FIELDS",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "webapp.core.errors.add_error_responses",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
}
