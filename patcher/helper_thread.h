// One thread that runs a job on request: started outside the pause, so that inside it a second
// core starts on its share of the work as soon as it is woken (a condition variable, not a spin:
// a spinning thread takes a core from the QEMU threads that carry out the stop).
//
// A job must not assume it runs at all soon: on a busy host the helper may get no core until
// the caller is done. Callers share work through an atomic cursor, so the caller finishes
// whatever the helper has not started, and Wait() only waits for a piece already begun.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

namespace hv::patcher {

class HelperThread {
 public:
  HelperThread() : thread_([this] { Loop(); }) {}
  ~HelperThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  HelperThread(const HelperThread&) = delete;
  HelperThread& operator=(const HelperThread&) = delete;

  // Runs `job` on the helper. One job at a time: Wait() before the next Post().
  void Post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = std::move(job);
      done_ = false;
    }
    cv_.notify_all();
  }

  // Until the posted job has returned (at once if none was posted).
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || job_; });
      if (stop_) return;
      std::function<void()> job = std::move(job_);
      job_ = nullptr;
      lock.unlock();
      job();
      lock.lock();
      done_ = true;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool done_ = true;
  bool stop_ = false;
  std::thread thread_;  // last: started once the members above exist
};

}  // namespace hv::patcher
