"""The cgroup v2 test VM: the Debian 12 disk `.ci/vm/build-disk` makes, booted with qemu.

The guest runs systemd with the unified cgroup hierarchy and Debian's docker.io, as a user's
cgroup v2 host does. It has no way out (qemu user networking with restrict=on); the host
reaches its ssh and chosen ports through loopback-only forwards. Docker images go in as
read-only virtio disks holding `docker save` output, so they must be named before boot.
The disk in the cache is never written: the guest writes to a throwaway qcow2 overlay, which
a restart (start(fresh=False), after power_cut()) boots again, as a host
boots its own disk after a power cut.
"""
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.images import free_port
from tests.support.servers import REPO

BUILD_DISK = REPO / ".ci" / "vm" / "build-disk"
BUILD_DISK_TIMEOUT_S = 1800
QEMU = "qemu-system-x86_64"
SSH_TIMEOUT_S = 300
"""Boot to ssh: 30-55 s under TCG on a 2-core host; generous for a loaded CI host."""
LOAD_TIMEOUT_S = 600
MEMORY_MB = 4096
TCG_CPU = "max"
CPUS = 2
MIB = 1024 * 1024
KERNEL_ARGS = ["root=/dev/vda", "rw", "console=ttyS0", "systemd.unified_cgroup_hierarchy=1",
               "panic=-1",
               # A throwaway test guest needs no CPU-bug mitigations; under KVM on real
               # hardware they would only cost time.
               "mitigations=off"]


def build_disk() -> Path:
    """The cached disk's directory (built first when the script changed)."""
    done = subprocess.run(["bash", str(BUILD_DISK)], capture_output=True, text=True,
                          timeout=BUILD_DISK_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{BUILD_DISK} failed ({done.returncode}):\n{done.stderr[-6000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def kvm_usable() -> bool:
    """Whether /dev/kvm can boot a stock kernel: kvm_intel or kvm_amd, not kvm_pvm (which
    stops a normal guest with "KVM internal error ... emulation failure")."""
    modules = Path("/sys/module")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or (modules / "kvm_pvm").exists():
        return False
    return (modules / "kvm_intel").exists() or (modules / "kvm_amd").exists()


class VM:
    """One boot of the test VM: start(), ssh(), load_image(), stop() (always)."""

    def __init__(self, disk_dir: Path, workdir: Path, guest_ports: Sequence[int] = (),
                 images: Sequence[str] = ()) -> None:
        self.disk_dir, self.workdir = disk_dir, workdir
        self.ssh_port = free_port()
        self.ports = {guest: free_port() for guest in guest_ports}
        """Guest port -> the host's 127.0.0.1 port forwarded to it."""
        self.images = list(images)
        self.serial_log = workdir / "serial.log"
        self.accel = "kvm" if kvm_usable() else "tcg,thread=multi"
        self.qemu: subprocess.Popen | None = None
        self.image_files: list[Path] = []

    def _save_images(self) -> list[Path]:
        """`docker save` each image into a file padded to whole MiB (a raw disk for qemu)."""
        files = []
        for index, tag in enumerate(self.images):
            path = self.workdir / f"image{index}.tar"
            with path.open("wb") as out:
                subprocess.run(["docker", "save", tag], stdout=out, check=True, timeout=600)
            size = path.stat().st_size
            os.truncate(path, -(-size // MIB) * MIB)  # zeros after the tar's end: still a tar
            files.append(path)
        return files

    def start(self, fresh: bool = True) -> None:
        """Boot the VM (returns at once; wait_ssh() waits for it): on a new overlay, or with
        fresh=False on the one it had (its disk as the last boot left it; the same ports and
        image disks)."""
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise FileNotFoundError(f"{QEMU} (apt-get install qemu-system-x86)")
        overlay = self.workdir / "overlay.qcow2"
        if fresh or not overlay.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(self.disk_dir / "disk.raw"), str(overlay)], check=True)
            self.image_files = self._save_images()
        forwards = [f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"] + [
            f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.ports.items()]
        # The root disk first (/dev/vda), then one read-only disk per image, which the guest
        # finds by its serial (/dev/disk/by-id/virtio-image<N>).
        # cache=unsafe: the guest's many fsyncs (docker load, containerd) need not reach the
        # host's disk. qemu still writes what the guest flushed (its qcow2 metadata too) to the
        # host's page cache, so a killed qemu (power_cut) loses only what the guest had not
        # flushed, as a host that loses power does; the overlay outlives only this host's uptime.
        disks = [(f"file={overlay},format=qcow2,cache=unsafe", "root")] + [
            (f"file={path},format=raw,readonly=on", f"image{index}")
            for index, path in enumerate(self.image_files)]
        drives = [arg for drive, serial in disks for arg in (
            "-drive", f"{drive},if=none,id={serial}",
            "-device", f"virtio-blk-pci,drive={serial},serial={serial}")]
        argv = [
            qemu, "-accel", self.accel, "-cpu", "host" if self.accel == "kvm" else TCG_CPU,
            "-smp", str(CPUS), "-m", str(MEMORY_MB), "-no-reboot",
            "-kernel", str(self.disk_dir / "vmlinuz"), "-initrd", str(self.disk_dir / "initrd.img"),
            "-append", " ".join(KERNEL_ARGS),
            *drives,
            "-netdev", ",".join(["user,id=net0,restrict=on", *forwards]),
            "-device", "virtio-net-pci,netdev=net0",
            "-display", "none", "-monitor", "none", "-serial", f"file:{self.serial_log}",
        ]
        self.qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(self.workdir / "qemu.stderr").open("wb"),
                                     start_new_session=True)

    def ssh(self, command: str, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command as root in the guest."""
        argv = ["ssh", "-i", str(self.disk_dir / "id_ed25519"), "-p", str(self.ssh_port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "root@127.0.0.1", command]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"in the VM: {command} failed ({done.returncode}):\n"
                               f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def wait_ssh(self, within_s: float = SSH_TIMEOUT_S) -> float:
        """Wait until ssh answers; the seconds it took."""
        started = time.monotonic()
        while time.monotonic() < started + within_s:
            if self.qemu is None or self.qemu.poll() is not None:
                raise RuntimeError(f"qemu exited ({self.qemu and self.qemu.returncode}):\n"
                                   f"{self.diagnostics()}")
            try:
                if self.ssh("true", timeout=20, check=False).returncode == 0:
                    return time.monotonic() - started
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        raise RuntimeError(f"no ssh after {within_s} s:\n{self.diagnostics()}")

    def load_image(self, tag: str) -> None:
        """`docker load` an image given to the constructor, from its disk."""
        device = f"/dev/disk/by-id/virtio-image{self.images.index(tag)}"
        self.ssh(f"docker load -i {device}", timeout=LOAD_TIMEOUT_S)
        self.ssh(f"docker image inspect {shlex.quote(tag)} >/dev/null")

    def serial_tail(self, lines: int = 60) -> str:
        try:
            text = self.serial_log.read_text(errors="replace")
        except OSError:
            return "(no serial log)"
        return "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> str:
        """The serial console's tail and qemu's stderr, for failure messages."""
        try:
            stderr = (self.workdir / "qemu.stderr").read_text(errors="replace")[-2000:]
        except OSError:
            stderr = ""
        return f"--- serial console (tail) ---\n{self.serial_tail()}\n--- qemu stderr ---\n{stderr}"

    def power_cut(self) -> None:
        """Kill qemu (SIGKILL): the guest loses power, with no shutdown of any kind."""
        if self.qemu is not None and self.qemu.poll() is None:
            os.killpg(self.qemu.pid, signal.SIGKILL)
            self.qemu.wait(timeout=30)

    def stop(self) -> None:
        """Power the guest off (qemu is killed when it does not go within 30 s); then delete
        the overlay and the image files, keeping the logs."""
        if self.qemu is not None and self.qemu.poll() is None:
            try:
                self.ssh("systemctl poweroff --no-block", timeout=20, check=False)
                self.qemu.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.power_cut()
        for path in [self.workdir / "overlay.qcow2", *self.workdir.glob("image*.tar")]:
            path.unlink(missing_ok=True)
