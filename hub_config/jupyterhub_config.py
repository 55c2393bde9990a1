"""JupyterHub configuration for loophub's embedded default (`loophub up`).

Everything comes from the environment that `loophub up` sets (loophub.settings):
one LOOPHUB_HOME holds the hub database, the secrets, the loophub database and
blobs, and users' home folders. To customise, put a jupyterhub_config_local.py in
LOOPHUB_HOME (or point LOOPHUB_HUB_CONFIG at a file); it is loaded last.
"""

import os
import shutil
import sys
from pathlib import Path

from loophub.hub_config.defaults import default_custom_limits, default_profiles, secret_token
from loophub.pool import load_pool
from loophub.settings import Settings

c = get_config()  # noqa: F821 (provided by JupyterHub)
settings = Settings.from_env()
settings.ensure_dirs()
env = os.environ
REPO = Path(__file__).resolve().parent.parent

ip = env.get("LOOPHUB_IP", "127.0.0.1")
port = int(env.get("LOOPHUB_PORT", "8000"))
hub_port = int(env.get("LOOPHUB_HUB_PORT", "8081"))
api_port = int(env.get("LOOPHUB_API_PORT", "10101"))
gateway_port = int(env.get("LOOPHUB_GATEWAY_PORT", "10102"))
apps_port = int(env.get("LOOPHUB_APPS_PORT", "10103"))
proxy_api_port = int(env.get("LOOPHUB_PROXY_API_PORT", "8001"))

# --- the hub -----------------------------------------------------------------
c.JupyterHub.bind_url = f"http://{ip}:{port}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = settings.hub_db_url
c.JupyterHub.cookie_secret_file = str(settings.secrets_dir / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(settings.home / "jupyterhub.pid")
# `loophub up --keep-servers` lets servers outlive a hub restart (found again by pid).
c.JupyterHub.cleanup_servers = env.get("LOOPHUB_KEEP_SERVERS", "") != "1"
c.JupyterHub.allow_named_servers = True
# The hub's own pages, extended (home.html adds the loophub panel), not replaced.
c.JupyterHub.template_paths = [str(Path(__file__).resolve().parent / "templates")]

proxy = env.get("LOOPHUB_PROXY") or shutil.which(
    "configurable-http-proxy", path=str(REPO / "node_modules" / ".bin")
) or "configurable-http-proxy"
c.ConfigurableHTTPProxy.command = [proxy]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(settings.home / "proxy.pid")

# --- who may log in ------------------------------------------------------------
c.JupyterHub.authenticator_class = "loophub.extensions.authenticator.LoophubAuthenticator"

# --- single-user servers: FairSpawner ----------------------------------------------
# Every server queues in loophub's fair scheduler (owned by the API service) and runs
# on the local machine with its allocation enforced. Servers run as the hub's user,
# each in its own folder under LOOPHUB_HOME/users (no system accounts needed; set
# c.LocalBackend.run_as_user = True with PAM to run them as system users).
c.JupyterHub.spawner_class = "loophub"
c.FairSpawner.home_dir_template = str(settings.users_dir / "{username}")
# The tutorials are in every user's home from the first spawn (copied once, never over
# a user's file), so the README's tour starts from a file the user sees.
c.FairSpawner.tutorials_dir = str(REPO / "notebooks")
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
spawner_token = secret_token(settings.secrets_dir / "spawner_token")
c.FairSpawner.scheduler_token = spawner_token
pool = load_pool(settings.pool)  # detected (or declared) once, for both defaults
c.FairSpawner.profiles = default_profiles(pool)
c.FairSpawner.custom_limits = default_custom_limits(pool)
c.Spawner.default_url = "/lab"
if os.geteuid() == 0:  # containers and CI run as root; jupyter-server refuses root by default
    c.Spawner.args = ["--allow-root"]
# No start_timeout here: FairSpawner's default is queue_timeout + launch_timeout, so a
# wait in the fair queue is bounded by queue_timeout, not cut short by the hub.
c.Spawner.http_timeout = 120
api_url = f"http://127.0.0.1:{api_port}/services/loophub/api"
c.Spawner.environment = {**settings.env(), "LOOPHUB_API_URL": api_url}
c.FairSpawner.scheduler_url = api_url

# Slurm backend (profiles with "backend": "slurm"): batchspawner-singleuser reports its
# port here; only an integer port for the caller's own server is accepted. Importing this
# also removes batchspawner's own handler, which sets any spawner attribute it is sent.
from loophub.spawner.backends.slurm import PortCallbackHandler  # noqa: E402

c.JupyterHub.extra_handlers = [(r"/api/batchspawner", PortCallbackHandler)]

# --- the loophub API service -------------------------------------------------------
c.JupyterHub.services = [
    {
        "name": "loophub",
        "url": f"http://127.0.0.1:{api_port}",
        "command": [sys.executable, "-m", "loophub.extensions.api"],
        # the public URL reaches users' servers through the proxy (to stop a kernel whose
        # allocation ended); options beyond these: HOME/loophub_api_config.py
        "environment": {**settings.env(), "LOOPHUB_PUBLIC_URL": (
            f"http://{'127.0.0.1' if ip in ('0.0.0.0', '') else ip}:{port}"),
            # --keep-servers keeps release replicas too
            "LOOPHUB_KEEP_SERVERS": env.get("LOOPHUB_KEEP_SERVERS", "")},
        "oauth_no_confirm": True,
        "display": True,
        "info": {"description": "loophub API: data, scheduling, training, serving"},
    },
    # The hub-side identity FairSpawner uses to queue requests on users' behalf.
    {"name": "loophub-spawner", "api_token": spawner_token},
    # The release gateway: /services/models/<release>/predict for every served release
    # (loophub.serving.gateway). It authorises each release itself (owner, group, admins,
    # API keys), so every user may reach it.
    {
        "name": "models",
        "url": f"http://127.0.0.1:{gateway_port}",
        "command": [sys.executable, "-m", "loophub.serving.gateway"],
        "environment": {**settings.env(), "LOOPHUB_GATEWAY_PORT": str(gateway_port)},
        "oauth_no_confirm": True,
    },
    # The releases' apps for end users: /services/apps/<release> (loophub.serving.apps,
    # Voila behind the hub's OAuth). The app calls the release as its visitor, so the
    # visitor's token for this service may reach the API and the gateway (each of them
    # authorises the release itself). Options: HOME/loophub_apps_config.py.
    {
        "name": "apps",
        "url": f"http://127.0.0.1:{apps_port}",
        "command": [sys.executable, "-m", "loophub.serving.apps",
                    f"--AppsServer.templates_dir={REPO / 'notebooks' / 'apps'}"],
        "environment": {**settings.env(), "LOOPHUB_API_URL": api_url},
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["access:services!service=loophub",
                                        "access:services!service=models"],
        "display": True,
        "info": {"description": "loophub apps: a web page per release for its end users"},
    },
]
c.JupyterHub.load_roles = [
    {
        # The service manages accounts, groups and servers on the platform's behalf.
        "name": "loophub-service",
        "scopes": ["admin:users", "admin:groups", "admin:servers", "list:users",
                   "read:users", "tokens", "access:servers"],
        "services": ["loophub"],
    },
    {
        "name": "loophub-spawner",
        "scopes": ["access:services!service=loophub", "read:users", "read:groups"],
        "services": ["loophub-spawner"],
    },
    {
        # Every user may call the loophub API, the release gateway and the apps (each
        # authorises every route or release itself).
        "name": "user",
        "scopes": ["self", "access:services!service=loophub", "access:services!service=models",
                   "access:services!service=apps"],
    },
    {
        # A notebook acts as its user: the SDK's calls from a server carry the user's rights
        # (the loophub API and the release gateway included).
        "name": "server",
        "scopes": ["inherit"],
    },
]

# --- local overrides, loaded last ----------------------------------------------------
local = env.get("LOOPHUB_HUB_CONFIG") or str(settings.home / "jupyterhub_config_local.py")
if os.path.exists(local):
    load_subconfig(local)  # noqa: F821
