// The floor of a C++ gRPC transport: a PredictionService with zero overhead of its own.
//
// What stock TF-Serving's transport could at best do: gRPC C++ receives the request and
// protobuf C++ parses it (every input, strings included, into the message); the handler
// reads `delay_us`, waits that long (the model's in-process run) and returns the inputs
// named `reply:<name>` as outputs `<name>` (`reply` as `y`; without any, input `x` as `y`).
// Same control inputs as benchmarks/grpc_floor.py. Built by benchmarks/cxx_floor/build.py.
//
//     floor --port=PORT

#include <sys/prctl.h>

#include <chrono>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "tensorflow_serving/apis/prediction_service.grpc.pb.h"

namespace {

using tensorflow::TensorProto;
using tensorflow::serving::PredictionService;
using tensorflow::serving::PredictRequest;
using tensorflow::serving::PredictResponse;

// Below this a delay is spun rather than slept: a wake-up costs more than the wait.
constexpr double kSpinBelowUs = 100.0;

double Scalar(const TensorProto& t) {
  if (t.dtype() == tensorflow::DT_DOUBLE) {
    if (t.double_val_size() > 0) return t.double_val(0);
    double v = 0;
    if (t.tensor_content().size() == sizeof v) std::memcpy(&v, t.tensor_content().data(), sizeof v);
    return v;
  }
  if (t.float_val_size() > 0) return t.float_val(0);
  float v = 0;
  if (t.tensor_content().size() == sizeof v) std::memcpy(&v, t.tensor_content().data(), sizeof v);
  return v;
}

void Wait(double us) {
  using Clock = std::chrono::steady_clock;
  const auto until = Clock::now() + std::chrono::nanoseconds(static_cast<int64_t>(us * 1e3));
  if (us >= kSpinBelowUs) std::this_thread::sleep_until(until);
  while (Clock::now() < until) {
  }
}

class Floor final : public PredictionService::Service {
  grpc::Status Predict(grpc::ServerContext*, const PredictRequest* request,
                       PredictResponse* response) override {
    const auto& inputs = request->inputs();
    auto delay = inputs.find("delay_us");
    if (delay != inputs.end()) Wait(Scalar(delay->second));
    auto& outputs = *response->mutable_outputs();
    bool replied = false;
    for (const auto& [name, tensor] : inputs) {
      if (name == "reply") {
        outputs["y"] = tensor;
        replied = true;
      } else if (name.rfind("reply:", 0) == 0) {
        outputs[name.substr(6)] = tensor;
        replied = true;
      }
    }
    if (!replied) {
      auto x = inputs.find("x");
      if (x == inputs.end()) return {grpc::StatusCode::INVALID_ARGUMENT, "no input x"};
      outputs["y"] = x->second;
    }
    *response->mutable_model_spec() = request->model_spec();
    return grpc::Status::OK;
  }
};

std::unique_ptr<grpc::Server> server;

}  // namespace

int main(int argc, char** argv) {
  int port = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--port=", 7) == 0) port = std::atoi(argv[i] + 7);
  }
  if (port <= 0) {
    std::fprintf(stderr, "usage: %s --port=PORT\n", argv[0]);
    return 2;
  }
  prctl(PR_SET_TIMERSLACK, 1UL);  // sleeps end on time (default slack: 50 us); threads inherit
  Floor service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(INT_MAX);
  builder.SetMaxSendMessageSize(INT_MAX);
  builder.RegisterService(&service);
  server = builder.BuildAndStart();
  if (!server) return 1;
  std::signal(SIGTERM, [](int) { std::_Exit(0); });
  server->Wait();
  return 0;
}
