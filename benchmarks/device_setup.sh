# Source on the device machine (repo root): installs the carried wheels (.whl/) and puts the repo on PYTHONPATH.
# .whl/ holds diffusers (the image has none) and ftfy + wcwidth (SkyReels-V2's pipeline cleans prompts with ftfy):
#   pip download -d .whl --no-deps diffusers==0.42.1 ftfy wcwidth
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
