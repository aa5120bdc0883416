from setuptools import find_packages, setup

setup(
    name="revvit",
    version="0.1.0",
    description="Reversible Vision Transformers (Rev-ViT, Rev-MViT): training, evaluation and memory benchmarks",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # configs/ stays at the repository root (--cfg configs/...) and is installed as revvit/configs,
    # where revvit.create_model finds the published configs of an installed package.
    packages=find_packages(include=["revvit", "revvit.*"]) + ["revvit.configs"],
    package_dir={"revvit.configs": "configs"},
    package_data={"revvit.configs": ["*/*.yaml"]},
    # torch 2.6: the first release with fully_shard / MixedPrecisionPolicy public in torch.distributed.fsdp,
    # torch.nn.utils.get_total_norm and clip_grads_with_norm_ (also used: torch.amp.custom_fwd 2.4,
    # GradScaler("cpu") and init_process_group(device_id=) 2.3). Nothing needs a release newer than 2.11.
    # torchvision 0.21 is the release that pairs with torch 2.6.
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "timm>=0.9",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "yacs>=0.1.8",
        "PyYAML>=5.4",
        "simplejson>=3.17",
        "tensorboard>=2.10",
        "av>=11",
        "scikit-learn>=1.0",
        "matplotlib>=3.5",
        "numpy>=1.22",
        "psutil>=5.9",
        "tqdm>=4.60",
        "Pillow>=9",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2"]},
)
