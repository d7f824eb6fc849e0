# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A kubelet stand-in of gpulab.mps: the kubelet's side of the device plugin API v1beta1, and nothing else.

It serves Registration.Register on <socket_dir>/kubelet.sock (a real kubelet: /var/lib/kubelet/device-plugins),
records every RegisterRequest, and then, as the kubelet does, dials the plugin's endpoint in the same directory and
calls GetDevicePluginOptions, ListAndWatch and Allocate on it (PluginClient). No API server, no scheduler, no pod:
what a device plugin tells the kubelet is all there is to see.

No generated stubs: the messages are built at run time from the API's .proto text (parse_proto: the subset of
proto3 that api.proto uses - messages, repeated and map fields, services; imports, options and comments skipped)
into a descriptor pool, so the stand-in speaks exactly the api.proto it is given (on the GPU host, the one vendored
by the plugin's source, given in the lane's --bin folder). Needs grpcio and protobuf (4.21 or later, for GetMessageClass).
"""

from __future__ import annotations

import os
import queue
import re
import stat
import time
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}
_TOKEN = re.compile(r'"[^"]*"|[A-Za-z_][A-Za-z0-9_.]*|\d+|[{}()<>=;,\[\]]')


class ProtoError(ValueError):
    """A .proto text outside the subset this parser reads."""


def _tokens(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return _TOKEN.findall(text)


def parse_proto(text):
    """{"package", "messages": {name: [field]}, "services": {name: [rpc]}} of a proto3 text.

    field: {"name", "number", "type", "repeated", "map": (key, value) or None}; rpc: {"name", "input", "output",
    "server_streaming"}.
    """
    tokens = _tokens(text)
    pos = 0
    parsed = {"package": "", "messages": {}, "services": {}}

    def take(expected=None):
        nonlocal pos
        if pos >= len(tokens):
            raise ProtoError("unexpected end of the .proto text")
        token = tokens[pos]
        pos += 1
        if expected is not None and token != expected:
            raise ProtoError("expected %r, got %r (token %d)" % (expected, token, pos))
        return token

    def skip_statement():
        depth = 0
        while True:
            token = take()
            if token in "[(":
                depth += 1
            elif token in "])":
                depth -= 1
            elif token == ";" and depth == 0:
                return

    def skip_brackets():
        if pos < len(tokens) and tokens[pos] == "[":
            while take() != "]":
                pass

    while pos < len(tokens):
        token = take()
        if token in ("syntax", "import", "option"):
            skip_statement()
        elif token == "package":
            parsed["package"] = take()
            take(";")
        elif token == "message":
            name = take()
            take("{")
            fields = []
            while tokens[pos] != "}":
                if tokens[pos] in ("option", "reserved"):
                    skip_statement()
                    continue
                repeated = tokens[pos] == "repeated"
                if repeated:
                    take()
                kind = take()
                mapping = None
                if kind == "map":
                    take("<")
                    key = take()
                    take(",")
                    value = take()
                    take(">")
                    mapping = (key, value)
                field = take()
                take("=")
                number = int(take())
                skip_brackets()
                take(";")
                fields.append({"name": field, "number": number, "type": kind, "repeated": repeated or bool(mapping),
                               "map": mapping})
            take("}")
            parsed["messages"][name] = fields
        elif token == "service":
            name = take()
            take("{")
            rpcs = []
            while tokens[pos] != "}":
                if tokens[pos] == "option":
                    skip_statement()
                    continue
                take("rpc")
                method = take()
                take("(")
                request = take()
                take(")")
                take("returns")
                take("(")
                streaming = tokens[pos] == "stream"
                if streaming:
                    take()
                response = take()
                take(")")
                if tokens[pos] == "{":
                    take("{")
                    take("}")
                else:
                    take(";")
                rpcs.append({"name": method, "input": request, "output": response, "server_streaming": streaming})
            take("}")
            parsed["services"][name] = rpcs
        elif token == ";":
            continue
        else:
            raise ProtoError("unexpected %r at token %d (only messages, services, options and imports are read)"
                             % (token, pos))
    return parsed


def _camel(name):
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def file_descriptor(parsed, filename="deviceplugin.proto"):
    """The FileDescriptorProto of a parse_proto() result (map fields get their MapEntry types)."""
    package = parsed["package"]
    out = descriptor_pb2.FileDescriptorProto(name=filename, package=package, syntax="proto3")
    names = set(parsed["messages"])

    def set_type(field, kind):
        if kind in _SCALARS:
            field.type = _SCALARS[kind]
        elif kind in names:
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            field.type_name = ".%s.%s" % (package, kind)
        else:
            raise ProtoError("unknown type %r" % kind)

    for name, fields in parsed["messages"].items():
        message = out.message_type.add(name=name)
        for spec in fields:
            field = message.field.add(name=spec["name"], number=spec["number"], json_name=spec["name"])
            field.label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if spec["repeated"]
                           else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if spec["map"]:
                entry = message.nested_type.add(name=_camel(spec["name"]) + "Entry")
                entry.options.map_entry = True
                for number, (entry_name, kind) in enumerate(zip(("key", "value"), spec["map"]), 1):
                    entry_field = entry.field.add(name=entry_name, number=number, json_name=entry_name,
                                                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
                    set_type(entry_field, kind)
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = ".%s.%s.%s" % (package, name, entry.name)
            else:
                set_type(field, spec["type"])
    for name, rpcs in parsed["services"].items():
        service = out.service.add(name=name)
        for rpc in rpcs:
            service.method.add(name=rpc["name"], input_type=".%s.%s" % (package, rpc["input"]),
                               output_type=".%s.%s" % (package, rpc["output"]),
                               server_streaming=rpc["server_streaming"])
    return out


class Api(object):
    """The message classes and method paths of one .proto text."""

    def __init__(self, proto_text):
        self.parsed = parse_proto(proto_text)
        self.package = self.parsed["package"]
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file_descriptor(self.parsed))
        self.messages = dict((name, message_factory.GetMessageClass(pool.FindMessageTypeByName(
            "%s.%s" % (self.package, name)))) for name in self.parsed["messages"])

    @classmethod
    def from_file(cls, path):
        with open(path) as handle:
            return cls(handle.read())

    def rpc(self, service, method):
        for rpc in self.parsed["services"][service]:
            if rpc["name"] == method:
                return ("/%s.%s/%s" % (self.package, service, method), self.messages[rpc["input"]],
                        self.messages[rpc["output"]], rpc["server_streaming"])
        raise KeyError("%s.%s" % (service, method))

    @staticmethod
    def to_dict(message):
        return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _unix(path):
    return "unix:" + os.path.abspath(path)


def remove_socket(path):
    """Remove path if it is a socket (never anything else)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


class KubeletStandin(object):
    """Registration.Register on <socket_dir>/kubelet.sock; each request is kept in `registrations`."""

    def __init__(self, api, socket_dir):
        self.api = api
        self.socket_dir = socket_dir
        self.socket = os.path.join(socket_dir, KUBELET_SOCKET)
        self.registrations = []
        self._new = queue.Queue()
        self.server = None

    def _register(self, request, context):
        entry = self.api.to_dict(request)
        entry["received"] = time.time()
        self.registrations.append(entry)
        self._new.put(entry)
        return self.api.messages["Empty"]()

    def start(self):
        path, request, response, _stream = self.api.rpc("Registration", "Register")
        service, method = path.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(
            self._register, request_deserializer=request.FromString, response_serializer=response.SerializeToString)})
        remove_socket(self.socket)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
        if not self.server.add_insecure_port(_unix(self.socket)):
            raise RuntimeError("cannot listen on %s" % self.socket)
        self.server.start()
        return self

    def reset(self):
        """Forget every registration so far (a new plugin is about to start)."""
        self.registrations[:] = []
        while True:
            try:
                self._new.get_nowait()
            except queue.Empty:
                return

    def wait_for(self, resource_name, timeout):
        """The registration of resource_name (waiting up to timeout seconds), or None."""
        deadline = time.time() + timeout
        for entry in self.registrations:
            if entry.get("resource_name") == resource_name:
                return entry
        while time.time() < deadline:
            try:
                entry = self._new.get(timeout=max(0.05, deadline - time.time()))
            except queue.Empty:
                break
            if entry.get("resource_name") == resource_name:
                return entry
        return None

    def wait_quiet(self, seconds):
        """Every registration received until none came for `seconds` (the plugin registers all resources at once)."""
        while True:
            try:
                self._new.get(timeout=seconds)
            except queue.Empty:
                return list(self.registrations)

    def plugin(self, registration):
        """A client of the plugin that sent this registration (its endpoint is relative to the socket directory)."""
        return PluginClient(self.api, os.path.join(self.socket_dir, registration["endpoint"]))

    def stop(self):
        if self.server is not None:
            self.server.stop(0)
            self.server = None
        remove_socket(self.socket)


class PluginClient(object):
    """The kubelet's calls to one device plugin, each bounded."""

    def __init__(self, api, socket_path):
        self.api = api
        self.socket_path = socket_path
        self.channel = grpc.insecure_channel(_unix(socket_path))
        self._streams = []

    def _unary(self, method, request, timeout):
        path, request_class, response_class, _stream = self.api.rpc("DevicePlugin", method)
        call = self.channel.unary_unary(path, request_serializer=request_class.SerializeToString,
                                        response_deserializer=response_class.FromString)
        return call(request, timeout=timeout)

    def options(self, timeout=10):
        return self.api.to_dict(self._unary("GetDevicePluginOptions", self.api.messages["Empty"](), timeout))

    def list_and_watch(self, timeout=30, until=None):
        """The device lists the plugin sends, until `until(devices)` holds for one (default: the first) or timeout.

        Returns (devices, updates): the last list (dicts with ID and health), and how many lists came.
        """
        path, request_class, response_class, _stream = self.api.rpc("DevicePlugin", "ListAndWatch")
        call = self.channel.unary_stream(path, request_serializer=request_class.SerializeToString,
                                         response_deserializer=response_class.FromString)
        stream = call(self.api.messages["Empty"](), timeout=timeout)
        self._streams.append(stream)
        devices, updates = None, 0
        try:
            for response in stream:
                updates += 1
                devices = self.api.to_dict(response).get("devices", [])
                if until is None or until(devices):
                    break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED or devices is None:
                raise
        return devices, updates

    def allocate(self, containers, timeout=30):
        """Allocate for one pod: containers is a list of device-ID lists. Returns (responses, error message)."""
        request = self.api.messages["AllocateRequest"]()
        for ids in containers:
            request.container_requests.add().devices_ids.extend(ids)
        try:
            response = self._unary("Allocate", request, timeout)
        except grpc.RpcError as error:
            return None, "%s: %s" % (error.code().name, error.details())
        return self.api.to_dict(response).get("container_responses", []), None

    def close(self):
        for stream in self._streams:
            stream.cancel()
        self.channel.close()


def compare_protos(reference, other):
    """Differences between two parse_proto() results in the messages and rpcs they share, as sentences."""
    out = []
    for name, fields in sorted(reference["messages"].items()):
        theirs = dict((f["name"], f) for f in other["messages"].get(name, []))
        for field in fields:
            mine = theirs.get(field["name"])
            if mine is None:
                out.append("%s.%s is missing" % (name, field["name"]))
            elif (mine["number"], mine["type"], mine["repeated"], mine["map"]) != (
                    field["number"], field["type"], field["repeated"], field["map"]):
                out.append("%s.%s differs: %r vs %r" % (name, field["name"], field, mine))
    return out


def serve_plugin(api, socket_path, servicer):
    """A device plugin server (for tests): servicer maps DevicePlugin method names to handlers."""
    handlers = {}
    for rpc in api.parsed["services"]["DevicePlugin"]:
        function = servicer.get(rpc["name"])
        if function is None:
            continue
        request, response = api.messages[rpc["input"]], api.messages[rpc["output"]]
        make = grpc.unary_stream_rpc_method_handler if rpc["server_streaming"] else grpc.unary_unary_rpc_method_handler
        handlers[rpc["name"]] = make(function, request_deserializer=request.FromString,
                                     response_serializer=response.SerializeToString)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[
        grpc.method_handlers_generic_handler("%s.DevicePlugin" % api.package, handlers)])
    remove_socket(socket_path)
    server.add_insecure_port(_unix(socket_path))
    server.start()
    return server


def register(api, kubelet_socket, endpoint, resource_name, timeout=10):
    """Register a plugin with a kubelet (for tests), as a device plugin does."""
    path, request_class, response_class, _stream = api.rpc("Registration", "Register")
    with grpc.insecure_channel(_unix(kubelet_socket)) as channel:
        call = channel.unary_unary(path, request_serializer=request_class.SerializeToString,
                                   response_deserializer=response_class.FromString)
        call(request_class(version=API_VERSION, endpoint=endpoint, resource_name=resource_name), timeout=timeout,
             wait_for_ready=True)


__all__ = ["Api", "KubeletStandin", "PluginClient", "ProtoError", "compare_protos", "parse_proto", "register",
           "remove_socket", "serve_plugin"]
