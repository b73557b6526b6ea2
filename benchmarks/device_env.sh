# Sourced by the device session scripts (gpu_session.sh, ab_session.sh, bwd_sm80_session.sh): the
# carried wheels (.whl/, e.g. nvidia-cutlass and expecttest, which the device image lacks)
# installed into /tmp/site, the checkout on PYTHONPATH, and the arch to build for.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

device_arch() {  # 90a on Hopper (wgmma, TMA), else 80
  python3 -c "import torch; M,m=torch.cuda.get_device_capability(); print('90a' if (M,m)==(9,0) else '80')"
}
