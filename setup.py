"""ament_python package definition for bisenet_ros.

Works both with ``colcon build`` in a ROS 2 workspace (launch/ and config/ are installed into
``share/bisenet_ros``) and with ``pip install -e .`` in a plain virtual environment.
The offline ``training`` package is deliberately not installed: it runs from a clone.
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "bisenet_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, package_name + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        # Parameter files, the recommended DDS configurations and the matching sysctl settings.
        ("share/" + package_name + "/config",
         glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.conf")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="bisenet_ros developers",
    maintainer_email="dev@bisenet-ros.invalid",
    description="Real-time BiSeNet V1/V2 and STDC semantic segmentation for ROS 2.",
    license="Apache-2.0",
    python_requires=">=3.10",
    # colcon test runs pytest for packages that name it here (current setuptools ignores tests_require).
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            # Both check the interpreter's packages first (one clear line if it is the wrong one).
            "segmentation_node = bisenet_ros.runtime:segmentation_node",
            "bisenet-ros = bisenet_ros.runtime:bisenet_ros_cli",
        ],
    },
)
