from setuptools import Extension, find_packages, setup

# im2col, col2im, pooling and LRN compiled (protonet/ckernels.py loads it with ctypes); optional:
# without a C compiler the install goes on and those passes run on NumPy
CKERNELS = Extension("protonet._ckernels", sources=["protonet/_ckernels.c"], optional=True, libraries=["m"],
                     extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno"])

setup(
    name="protonet",
    version="0.1.0",
    description="Caffe, reborn as a Python package: prototxt/caffemodel/LMDB assets on NumPy or CuPy",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["protonet", "protonet.*", "caffe", "caffe.*"]) + ["protonet_layers"],
    # the shipped plugins (Dice, DiceLoss) live in layers/; installed as protonet_layers
    package_dir={"protonet_layers": "layers"},
    package_data={"protonet": ["../proto/caffe.proto"]},
    install_requires=[
        "numpy>=1.22",
        # the committed caffe_pb2 is generated code that checks the runtime version
        "protobuf>=7.35.1",
        "scipy",
        "lmdb",
        "pydicom>=2.2",
        "Pillow",
        # training curves (protonet train / tutorial draw a PNG beside the snapshots)
        "matplotlib",
    ],
    extras_require={
        "gpu": ["cupy"],               # builds CuPy for the local CUDA toolkit (slow)
        # CuPy's prebuilt wheels, by the CUDA major version the driver supports
        "cuda12": ["cupy-cuda12x"],
        "cuda13": ["cupy-cuda13x"],
        # selenium drives the system's chromium (.ci/run installs it) for the report tests;
        # the TensorBoard tests write with the writer and read with TensorBoard's reader
        "test": ["pytest", "opencv-python-headless<5", "grpcio-tools>=1.85", "h5py", "selenium",
                 "tensorboardX>=2.6", "tensorboard"],
        "hdf5": ["h5py"],
        # data-parallel training over MPI (mpirun -np N protonet train): mpi4py and MPICH's
        # wheel (mpiexec lands in the environment's bin/); a system MPI works with mpi4py alone
        "mpi": ["mpi4py>=4", "mpich"],
        # benchmarks/ record which BLAS (and how many threads) NumPy runs on
        "bench": ["threadpoolctl"],
        # live curves: train writes TensorBoard event files beside the snapshots
        # (tensorboardX writes them; tensorboard shows them; crc32c makes the writing cheap)
        "tensorboard": ["tensorboardX>=2.6", "tensorboard", "crc32c"],
    },
    ext_modules=[CKERNELS],
    entry_points={"console_scripts": ["protonet=protonet.cli:main"]},
)
