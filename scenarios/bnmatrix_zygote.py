"""A cell's zygote: import TensorFlow once, then fork a child for each scenario.

`python bnmatrix_zygote.py serve SOCKET` imports TensorFlow (with the Keras behind tf.keras and the
Estimator API) and the scenario helper, then serves on the Unix socket SOCKET.

`python -S bnmatrix_zygote.py run SOCKET SCRIPT ARGS...` is the launcher bnmatrix starts for every
scenario. It hands the zygote its standard streams, working folder, environment and arguments; the
zygote forks a child that runs SCRIPT as `python SCRIPT ARGS...` would, in its own session, dying
with the zygote. The launcher ends as the child ends, with its exit code or killed by its signal;
when the launcher is killed (a timeout, a stop), the zygote kills the child's process group, and
when the child ends, whatever it left in its group.

Where forking is not safe, the launcher runs the scenario as a fresh process instead (it execs
Python on it): no zygote answers at SOCKET ("-" for none), the zygote's import failed or left more
than one thread (a fork copies only the thread that calls it), or the scenario's environment differs
from the zygote's in a variable that matters when TensorFlow is imported. Either way the scenario's
first line on stdout says which way it ran: `BNMATRIX_LAUNCH zygote` or `BNMATRIX_LAUNCH fresh: why`.

Runs inside a cell with only the standard library, on Python 3.6 to 3.13 on Linux (fork, /proc,
SCM_RIGHTS), so it keeps to Python 3.6 syntax.
"""
# The launcher starts for every scenario, so only what it needs is imported here (its start took three times as
# long with the zygote's modules); the zygote's own are imported in the functions that use them.
import array
import json
import os
import signal
import socket
import struct
import sys

LAUNCH_MARKER = "BNMATRIX_LAUNCH "
TOKEN_VARIABLE = "BNMATRIX_PROCESS_TOKEN"  # bnmatrix tags every process it starts with one (bnmatrix.host)
# What differs from one scenario to the next and is read only when used: the scratch folder and the token.
PER_SCENARIO = frozenset(["TMPDIR", TOKEN_VARIABLE, "PWD", "OLDPWD", "SHLVL", "_"])
MAX_REQUEST_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 10.0
REAP_EVERY_S = 1.0  # a child's end wakes the zygote (SIGCHLD); this only bounds a missed wake-up
ACCEPT_RETRY_S = 0.05  # out of descriptors: how long the zygote waits before it accepts again
HEADER = struct.Struct("!I")
STREAMS = 3  # stdin, stdout, stderr
_PR_SET_PDEATHSIG = 1


def threads():
    """How many threads this process has (Linux /proc)."""
    return len(os.listdir("/proc/self/task"))


def preload():
    """Import what every scenario imports, so that a child finds it imported; why forking is unsafe, or None."""
    import gc
    import traceback
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as the helper's main() sets it before its import
    gc.disable()  # what TensorFlow's import makes lives as long as the zygote: collecting it meanwhile wastes a tenth
    try:
        import tensorflow as tf
        import bnmatrix_scenario
        bnmatrix_scenario.quiet(tf)
        for path in ("keras.layers", "keras.optimizers", "estimator"):  # lazily loaded in TF 2.x
            try:
                bnmatrix_scenario.require(tf, path, compat=path == "estimator")
            except bnmatrix_scenario.Unsupported:
                pass
    except BaseException as exc:  # a broken TF: each scenario reports its own import error as a fresh process
        traceback.print_exc()
        return "the zygote's TensorFlow import failed ({}: {})".format(type(exc).__name__, exc)
    finally:
        gc.enable()
    count = threads()
    if count > 1:
        return "TensorFlow's import left {} threads in the zygote, and a fork copies only one".format(count)
    if hasattr(gc, "freeze"):  # Python 3.7+: a child's collections skip what the import made (a tenth of its time)
        gc.collect()
        gc.freeze()
    return None


def serve(path):
    """Listen at `path`, import TensorFlow, then fork a child per request. Returns only in a child: its request (with
    the zygote's pid) and its three streams; the zygote itself runs until it is killed."""
    import selectors
    import time
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)  # launchers that come during the import wait in the backlog
    print("bnmatrix-zygote: listening on {} (pid {})".format(path, os.getpid()), flush=True)
    own_environment = dict(os.environ)
    unsafe = preload()
    print("bnmatrix-zygote: " + ("forking each scenario" if unsafe is None else "fresh processes: " + unsafe),
          flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    wake_up, wake_up_write = child_ends()
    selector.register(wake_up, selectors.EVENT_READ)
    zygote = os.getpid()
    children = {}  # pid: the launcher's connection (None once the launcher has gone)
    while True:
        for key, _ in selector.select(REAP_EVERY_S):
            if key.fileobj is wake_up:
                drain(wake_up)
            elif key.fileobj is listener:
                try:
                    connection = listener.accept()[0]
                except OSError:  # out of descriptors for now: the launcher waits in the backlog
                    time.sleep(ACCEPT_RETRY_S)
                    continue
                request, streams, why = receive(connection, own_environment)
                why = unsafe or why
                if why is None:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    try:
                        pid = os.fork()
                    except OSError as exc:  # out of processes or memory: this scenario runs fresh, the zygote goes on
                        why = "the zygote could not fork ({})".format(exc)
                if why is not None:
                    send(connection, {"fresh": why})
                    for stream in streams:
                        os.close(stream)
                    connection.close()
                    continue
                if pid == 0:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the scenario's own children, as in a fresh process
                    signal.set_wakeup_fd(-1)
                    os.close(wake_up)
                    os.close(wake_up_write)
                    selector.close()
                    listener.close()
                    for other in children.values():
                        if other is not None:
                            other.close()
                    connection.close()
                    request["zygote"] = zygote
                    return request, streams
                for stream in streams:
                    os.close(stream)
                if not send(connection, {"pid": pid}):  # the launcher has gone already
                    connection.close()
                    children[pid] = None
                    kill_group(pid, unreaped=True)
                    continue
                children[pid] = connection
                selector.register(connection, selectors.EVENT_READ, pid)
            else:  # a launcher sends nothing more: readable means it has gone
                pid = key.data
                selector.unregister(key.fileobj)
                key.fileobj.close()
                children[pid] = None
                kill_group(pid, unreaped=True)
        reap(children, selector)


def child_ends():
    """A pipe (read end, write end) whose read end becomes readable when a child ends (SIGCHLD), so that its launcher
    hears at once."""
    read, write = os.pipe()
    for end in (read, write):
        os.set_blocking(end, False)
    signal.set_wakeup_fd(write)
    signal.signal(signal.SIGCHLD, lambda number, frame: None)  # the wake-up byte is written before this runs
    return read, write


def drain(descriptor):
    try:
        while os.read(descriptor, 512):
            pass
    except BlockingIOError:
        pass


def reap(children, selector):
    """Tell each launcher whose child ended how it ended, and kill what the child left in its process group."""
    while children:
        try:  # which child ended, still unreaped: its pid cannot be another's while its group is killed
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if ended is None or ended.si_pid == 0:
            return
        pid = ended.si_pid
        kill_group(pid)
        status = os.waitpid(pid, 0)[1]
        connection = children.pop(pid, None)
        if connection is None:
            continue
        ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
        send(connection, ended)
        selector.unregister(connection)
        connection.close()


def kill_group(pid, unreaped=False):
    """Kill a child's process group; an `unreaped` child (its pid still ours) itself too, should it not have set its
    session yet."""
    for kill in (os.kill, os.killpg) if unreaped else (os.killpg,):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def send(connection, message):
    """Whether the launcher got `message` (it may have been killed meanwhile)."""
    try:
        connection.sendall(json.dumps(message).encode("utf-8") + b"\n")
    except OSError:
        return False
    return True


def receive(connection, own_environment):
    """(request, its stream descriptors, why it must run fresh or None) of a launcher's connection."""
    import time
    deadline = time.time() + REQUEST_TIMEOUT_S
    connection.settimeout(REQUEST_TIMEOUT_S)
    streams = []
    try:
        fds = array.array("i")
        data, ancillary, _, _ = connection.recvmsg(1 << 16, socket.CMSG_SPACE(STREAMS * fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        streams = list(fds)
        if len(data) < HEADER.size or len(streams) != STREAMS:
            raise ValueError("a launcher sent no request with its three streams")
        size = HEADER.unpack(data[:HEADER.size])[0]
        if size > MAX_REQUEST_BYTES:
            raise ValueError("a request of {} bytes".format(size))
        body = data[HEADER.size:]
        while len(body) < size:
            connection.settimeout(max(0.001, deadline - time.time()))
            chunk = connection.recv(size - len(body))
            if not chunk:
                raise ValueError("the request ended early")
            body += chunk
        request = json.loads(body.decode("utf-8"))
        if not (isinstance(request, dict) and isinstance(request.get("script"), str)
                and isinstance(request.get("args"), list) and isinstance(request.get("cwd"), str)
                and isinstance(request.get("env"), dict)):
            raise ValueError("a request without its script, args, cwd and env")
        connection.settimeout(None)
    except Exception as exc:  # whatever a launcher sent: this one runs fresh, the zygote goes on
        return None, streams, "the zygote could not read the launcher's request: {}".format(exc)
    differing = sorted(k for k in set(own_environment) | set(request["env"]) if k not in PER_SCENARIO
                       and own_environment.get(k) != request["env"].get(k))
    if differing:
        return request, streams, ("the scenario's environment differs from the zygote's in {}, which TensorFlow "
                                  "may read at import".format(", ".join(differing[:5])))
    return request, streams, None


def run_child(request, streams):
    """In the forked child: become the scenario process `python SCRIPT ARGS...` would have been, and run it."""
    import random
    import tempfile
    os.setsid()
    die_with_parent()
    if os.getppid() != request["zygote"]:  # the zygote died before the death signal was set: its launcher runs fresh
        os._exit(70)
    for target, stream in enumerate(streams):
        if stream != target:
            os.dup2(stream, target)
    for stream in set(streams) - set(range(STREAMS)):
        os.close(stream)
    os.chdir(request["cwd"])
    for key in [k for k in os.environ if k not in request["env"]]:
        del os.environ[key]
    os.environ.update(request["env"])
    show_token(request["env"].get(TOKEN_VARIABLE))
    tempfile.tempdir = None  # the scenario's own TMPDIR from now on
    random.seed()  # fresh randomness, as a fresh interpreter would have
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    script = request["script"]
    sys.argv = [script] + list(request["args"])
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    sys.stdout.write(LAUNCH_MARKER + "zygote\n")
    sys.stdout.flush()
    code, interrupted = 0, False
    try:
        run_script(script)
    except SystemExit as exc:  # as the interpreter reads sys.exit's argument
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, int) and exc.code is not None:
            sys.stderr.write("{}\n".format(exc.code))
    except BaseException as exc:
        sys.excepthook(*sys.exc_info())
        code, interrupted = 1, isinstance(exc, KeyboardInterrupt)
    finish(code, interrupted)


def run_script(script):
    """Run `script` as `python script` runs it: as the module __main__, which stays for its threads and exit
    handlers."""
    import builtins
    import importlib.machinery
    import types
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=script, __builtins__=builtins, __cached__=None,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", script))
    sys.modules["__main__"] = main
    with open(script, "rb") as source:
        code = compile(source.read(), script, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def finish(code, interrupted=False):
    """End as the interpreter ends a script (its other threads joined, the exit handlers run, the streams flushed;
    killed by SIGINT after an uncaught Ctrl-C) but without tearing down TensorFlow's modules one by one: half a
    second that changes nothing a scenario reports (files it left open and unflushed stay so)."""
    threading = sys.modules.get("threading")
    if threading is not None and hasattr(threading, "_shutdown"):
        threading._shutdown()
    import atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


def die_with_parent():
    """SIGKILL when the zygote dies (Linux prctl), as bnmatrix's own children die with it."""
    import ctypes
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def show_token(token):
    """Put the scenario's token where /proc/<pid>/environ shows it, for this process and what it forks without
    an exec (which inherit its memory, not os.environ): bnmatrix finds what a scenario left by its token. The
    zygote was started with a token of the same length; the bytes are overwritten in place."""
    if not token:
        return
    import ctypes
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # field 3 onwards
        env_start = int(fields[47])  # field 50: where the initial environment starts in memory
        with open("/proc/self/environ", "rb") as environ:
            block = environ.read()
        name = (TOKEN_VARIABLE + "=").encode()
        at = 0 if block.startswith(name) else block.find(b"\0" + name) + 1
        if at == 0 and not block.startswith(name):
            return
        value = token.encode()
        end = block.find(b"\0", at)
        if end - at - len(name) == len(value):
            ctypes.memmove(env_start + at + len(name), value, len(value))
    except (OSError, ValueError, IndexError):
        pass


def launch(path, script, args):
    """The launcher: hand the scenario to the zygote at `path` and end as its child ends; or exec it fresh."""
    why = "no zygote in this cell" if path == "-" else None
    if why is None:
        try:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(path)
            body = json.dumps({"script": script, "args": args, "cwd": os.getcwd(),
                               "env": dict(os.environ)}).encode("utf-8")
            message = HEADER.pack(len(body)) + body
            try:
                sent = connection.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                       array.array("i", range(STREAMS)).tobytes())])
                if sent < len(message):
                    connection.sendall(message[sent:])
            except OSError:  # a zygote that will not fork this scenario may have answered and hung up already
                pass
            replies = connection.makefile("rb")
            first = json.loads(replies.readline().decode("utf-8") or "{}")
        except (OSError, ValueError) as exc:
            first = {"fresh": "no zygote answered at {} ({})".format(path, exc)}
        why = first.get("fresh", None if "pid" in first else "the zygote gave no answer")
    if why is not None:
        sys.stdout.write(LAUNCH_MARKER + "fresh: " + " ".join(why.split()) + "\n")
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, script] + list(args))
    ended = json.loads(replies.readline().decode("utf-8") or "{}")
    if "signal" in ended:  # ended as the child did, so bnmatrix sees what a fresh process's end would show
        number = int(ended["signal"])
        if number not in (signal.SIGKILL, signal.SIGSTOP):  # those two are never caught: no handler to reset
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        return 128 + number  # a signal that does not end a process (SIGCHLD, say): its shell-style status
    if "exit" not in ended:
        sys.stderr.write("bnmatrix: the cell's zygote ended while the scenario ran\n")
        return 70
    return int(ended["exit"])


def main(argv):
    if len(argv) == 2 and argv[0] == "serve":
        request, streams = serve(argv[1])
        run_child(request, streams)  # only a child gets here, and it ends there
    if len(argv) >= 3 and argv[0] == "run":
        return launch(argv[1], argv[2], argv[3:])
    sys.stderr.write("usage: bnmatrix_zygote.py serve SOCKET | run SOCKET SCRIPT [ARGS...]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
