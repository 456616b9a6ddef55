"""Backend ``gateway``: a new cluster from a Dask Gateway (dask-gateway), shut down when the job ends.

Secrets never sit in the profile: the password (basic auth) or API token (JupyterHub) is read from the
environment variable the profile names. GPU workers: ``gpu_options`` are added to the cluster options, and if
the gateway offers an ``environment`` option, workers are told to advertise ``GPU=1``.
"""
from __future__ import annotations

import contextlib
import logging
import os

import dask.config

from bigseg.cluster._backend import Request, check_gpu, on_no_workers, require, where
from bigseg.errors import ParameterError, first_line

log = logging.getLogger(__name__)
#: Worker setting (read by ``dask worker`` from the environment) that makes it advertise one GPU.
GPU_ENV = {"DASK_DISTRIBUTED__WORKER__RESOURCES": "{'GPU': 1}"}


def make_auth(profile, name: str | None):
    """The dask-gateway auth object of the profile (None: dask-gateway's own ``gateway.auth`` config)."""
    auth = profile.auth
    if auth is None:
        return None
    from dask_gateway import auth as gw_auth
    if auth.kind == "basic":
        password = os.environ.get(auth.password_env)
        if password is None:
            raise ParameterError(f"{where(name, 'auth')}: the environment variable {auth.password_env} "
                                 "(password_env) holding the gateway password is not set")
        return gw_auth.BasicAuth(auth.username, password)
    if auth.kind == "jupyterhub":
        token = os.environ.get(auth.api_token_env)
        if token is None:
            raise ParameterError(f"{where(name, 'auth')}: the environment variable {auth.api_token_env} "
                                 "(api_token_env) holding the JupyterHub API token is not set")
        return gw_auth.JupyterHubAuth(api_token=token)
    return gw_auth.KerberosAuth()


@contextlib.contextmanager
def open_client(profile, request: Request, name: str | None = None):
    dask_gateway = require("dask_gateway", "gateway", name)
    check_gpu(profile, request, name, " and the gateway's GPU options in gpu_options")
    address = profile.address or dask.config.get("gateway.address", default=None)
    if not address:
        raise ParameterError(f"{where(name, 'address')}: no gateway address; set it in the profile or in "
                             "dask-gateway's gateway.address")
    gateway = dask_gateway.Gateway(address, proxy_address=profile.proxy_address, auth=make_auth(profile, name))
    try:
        options = _options(gateway, profile, name, address)
        try:
            cluster = gateway.new_cluster(options, shutdown_on_close=True)
        except Exception as err:  # noqa: BLE001 - sorted by _gateway_error, the rest re-raised
            raise _gateway_error(err, address, profile, name) from None
        try:
            if profile.adapt is not None and request.workers is None:
                cluster.adapt(minimum=profile.adapt.minimum, maximum=profile.adapt.maximum)
            else:
                cluster.scale(request.workers or profile.scale or 1)
            with cluster.get_client(set_as_default=True) as client:
                adaptive = profile.adapt.maximum if profile.adapt is not None and request.workers is None else None
                on_no_workers(client, lambda: f"the gateway cluster {cluster.name} at {address} has no "
                                              "workers yet: check the gateway's limits and its backend's queue",
                              adaptive)
                yield client
        finally:
            cluster.close()  # shuts the cluster down
            _forget_loop(cluster.gateway)
    finally:
        close_gateway(gateway)


def close_gateway(gateway) -> None:
    """Close a ``Gateway`` client once."""
    gateway.close()
    _forget_loop(gateway)


def _forget_loop(gateway) -> None:
    """With distributed 2026.8, a closed ``Gateway``'s ``__del__`` calls ``close()`` again, whose access to the
    stopped loop raises (printed as an ignored exception); without its loop runner ``__del__`` does nothing."""
    gateway.__dict__.pop("_loop_runner", None)


def _options(gateway, profile, name: str | None, address: str):
    """The gateway's cluster options with the profile's (and for GPU profiles the GPU ones) applied."""
    try:
        options = gateway.cluster_options()
    except Exception as err:  # noqa: BLE001 - sorted by _gateway_error, the rest re-raised
        raise _gateway_error(err, address, profile, name) from None
    wanted = dict(profile.options)
    if profile.gpu:
        wanted.update(profile.gpu_options)
        if "environment" in options:
            wanted["environment"] = {**(wanted.get("environment") or options["environment"] or {}), **GPU_ENV}
        elif not profile.gpu_options:
            log.warning("gateway at %s offers no environment option: its GPU workers must advertise GPU=1 "
                        "themselves", address)
    for key, value in wanted.items():
        try:
            options[key] = value
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            offered = ", ".join(sorted(options)) or "none"
            raise ParameterError(f"{where(name, 'options')}.{key}: {err} (this gateway offers: {offered})") \
                from None
    return options


def _gateway_error(err: Exception, address: str, profile, name: str | None) -> Exception:
    """One line for what a user can fix: unreachable gateway, refused login; anything else stays a bug."""
    import aiohttp
    if isinstance(err, aiohttp.ClientResponseError) and err.status in (401, 403):
        auth = profile.auth
        secret = (f"the password in ${auth.password_env}" if auth and auth.kind == "basic" else
                  f"the token in ${auth.api_token_env}" if auth and auth.kind == "jupyterhub" else "the credentials")
        who = f" user {auth.username!r}" if auth and auth.username else ""
        return ParameterError(f"the Dask Gateway at {address} refused the login{who} ({err.status} "
                              f"{err.message}); check {secret} ({where(name, 'auth')})")
    if isinstance(err, (aiohttp.ClientConnectionError, OSError, TimeoutError)):
        reason = first_line(err)
        return ParameterError(f"cannot reach the Dask Gateway at {address} ({reason}); check "
                              f"{where(name, 'address')} and that the gateway runs")
    if isinstance(err, ValueError):  # 404/422 from the server: e.g. a bad option value
        return ParameterError(f"the Dask Gateway at {address} refused the cluster: {err} "
                              f"({where(name, 'options')})")
    return err
