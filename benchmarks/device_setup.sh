# Source on the device machine (repo root): installs the carried wheels (.whl/) and puts the repo on PYTHONPATH.
# .whl/ holds diffusers (the image has none) and ftfy + wcwidth (SkyReels-V2's pipeline cleans prompts with ftfy):
#   pip download -d .whl --no-deps diffusers==0.42.1 ftfy wcwidth
#
# FlashAttention-4 (optional) does not fit one call: its CUTLASS DSL compiler library is ~61 MiB even as .tar.xz and
# the tracked tree is ~50 MiB of a call's 64. So it travels in two calls on one warm machine (README's device notes):
#   here:  .fa4/      flash-attn-4, nvidia-cutlass-dsl (+ -libs-base, -libs-core), quack-kernels, apache-tvm-ffi,
#                     torch-c-dlpack-ext wheels (cp312, --no-deps, ~10 MiB)
#          .fa4big/   cu13.tar.xz: the unpacked nvidia-cutlass-dsl-libs-cu13 wheel, `xz -9e` (~61 MiB)
#          (both listed in .git/info/exclude). Made with, on 2026-12-07:
#            W="--no-deps --python-version 3.12 --only-binary :all: --platform manylinux_2_28_x86_64
#               --platform manylinux_2_17_x86_64 --platform any"
#            pip download -d .fa4 $W --pre flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 \
#                nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 quack-kernels==0.6.5 \
#                apache-tvm-ffi torch-c-dlpack-ext
#            pip download -d /tmp/cu13 $W nvidia-cutlass-dsl-libs-cu13==4.8.1
#            mkdir /tmp/cu13/x && cd /tmp/cu13/x && unzip -q ../*.whl && tar -cf - . | xz -9e -T2 >.fa4big/cu13.tar.xz
#            (the last step takes ~2.5 min on the 2-core machine; write to the repo's .fa4big/ by its full path)
#   call 1 (demo_model/ and benchmarks/results/ moved out of the tree for both calls: `bash
#          benchmarks/device_hold.sh out`, then `... back`), carry .fa4big:
#          mkdir -p /tmp/fa4site && xz -dc .fa4big/cu13.tar.xz | tar -C /tmp/fa4site -xf -
#          (outside the tree: an ignored folder inside it did not survive to the next call on 2026-12-07)
#   call 2, within the machine's 30 s idle window, carry .whl and .fa4: this script merges /tmp/fa4site (or
#          .fa4site) into /tmp/site.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
FA4SITE=.fa4site
[ -d $FA4SITE/nvidia_cutlass_dsl ] || FA4SITE=/tmp/fa4site  # call 1 may unpack outside the tree (kept while warm)
if compgen -G ".fa4/*.whl" >/dev/null && [ -d $FA4SITE/nvidia_cutlass_dsl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .fa4/*.whl || return 1
    cp -r $FA4SITE/. /tmp/site/  # the compiler library beside the DSL's Python (one nvidia_cutlass_dsl tree)
    # the wheel's .pth line, which --target installs do not run
    export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD
    python3 -c "import flash_attn.cute.interface; print('FlashAttention-4 imports')" || echo "FlashAttention-4 fails"
fi
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
