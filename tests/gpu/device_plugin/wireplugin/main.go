// gpulab-wireplugin: a device plugin made of the real Go side of the device plugin API v1beta1 (the vendored
// k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1 and grpc of the k8s-device-plugin tree it is compiled in), and of
// the same Register call and unix-socket dial as nvidia-device-plugin. No GPU, no NVML: it advertises -n fake
// devices, answers Allocate like the MPS path of the plugin, and refuses requests for more than one device.
//
// Part of gpulab.mps: tests/gpu/device_plugin/build.sh compiles it; the kubelet stand-in is checked against it on a
// CPU machine (tests/gpu/device_plugin/check_wire.py) before the GPU host runs the real plugin against the stand-in.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices int
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

func (p *plugin) ListAndWatch(_ *pluginapi.Empty, s pluginapi.DevicePlugin_ListAndWatchServer) error {
	var devices []*pluginapi.Device
	for i := 0; i < p.devices; i++ {
		devices = append(devices, &pluginapi.Device{ID: fmt.Sprintf("GPU-fake::%d", i), Health: pluginapi.Healthy,
			Topology: &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: 0}}}})
	}
	if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: devices}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (p *plugin) Allocate(_ context.Context, r *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	out := &pluginapi.AllocateResponse{}
	for _, c := range r.ContainerRequests {
		if len(c.DevicesIds) > 1 {
			return nil, fmt.Errorf("invalid allocation request: maximum request size for shared resources is 1; found %d",
				len(c.DevicesIds))
		}
		out.ContainerResponses = append(out.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe",
				"NVIDIA_VISIBLE_DEVICES": "GPU-fake", "GPULAB_DEVICE": c.DevicesIds[0]},
			Mounts: []*pluginapi.Mount{{ContainerPath: "/mps/nvidia.com/gpu/pipe",
				HostPath: "/run/nvidia/mps/nvidia.com/gpu/pipe"}, {ContainerPath: "/dev/shm",
				HostPath: "/run/nvidia/mps/shm", ReadOnly: true}},
			Devices:     []*pluginapi.DeviceSpec{{ContainerPath: "/dev/nvidia0", HostPath: "/dev/nvidia0", Permissions: "rw"}},
			Annotations: map[string]string{"gpulab.mps/device": c.DevicesIds[0]},
		})
	}
	return out, nil
}

func main() {
	dir := flag.String("dir", pluginapi.DevicePluginPath, "socket directory (the kubelet's)")
	resource := flag.String("resource", "nvidia.com/gpu", "resource name")
	devices := flag.Int("n", 20, "devices")
	flag.Parse()

	socket := filepath.Join(*dir, "gpulab-wire.sock")
	_ = os.Remove(socket)
	listener, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(server, &plugin{devices: *devices})
	go func() { _ = server.Serve(listener) }()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	//nolint:staticcheck // the dial of nvidia-device-plugin v0.20.0 (internal/plugin/server.go), on purpose
	conn, err := grpc.DialContext(ctx, filepath.Join(*dir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial kubelet:", err)
		os.Exit(1)
	}
	_, err = pluginapi.NewRegistrationClient(conn).Register(context.Background(), &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: filepath.Base(socket), ResourceName: *resource,
		Options: &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}})
	conn.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "register:", err)
		os.Exit(1)
	}
	fmt.Println("registered", *resource)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	server.Stop()
	_ = os.Remove(socket)
}
