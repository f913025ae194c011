#include <gtest/gtest.h>

#include "flashmoe/flashmoe.hpp"

namespace {

TEST(Status, DefaultIsOk) {
  const flashmoe::Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), flashmoe::StatusCode::Ok);
  EXPECT_EQ(s.to_string(), "ok");
}

TEST(Status, CarriesCodeAndMessage) {
  const flashmoe::Status s(flashmoe::StatusCode::InvalidArgument, "hidden = 0 must be positive");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), flashmoe::StatusCode::InvalidArgument);
  EXPECT_EQ(s.message(), "hidden = 0 must be positive");
  EXPECT_EQ(s.to_string(), "invalid_argument: hidden = 0 must be positive");
}

TEST(Status, EveryCodeHasAName) {
  using flashmoe::StatusCode;
  const std::pair<StatusCode, const char*> names[] = {
      {StatusCode::Ok, "ok"},
      {StatusCode::InvalidArgument, "invalid_argument"},
      {StatusCode::NotSupported, "not_supported"},
      {StatusCode::OutOfMemory, "out_of_memory"},
      {StatusCode::CudaError, "cuda_error"},
      {StatusCode::DeviceTimeout, "device_timeout"},
      {StatusCode::Internal, "internal"},
      {StatusCode::WorkspaceBusy, "workspace_busy"},
  };
  for (const auto& [code, name] : names) EXPECT_STREQ(flashmoe::to_string(code), name);
  EXPECT_STREQ(flashmoe::to_string(static_cast<StatusCode>(99)), "unknown");
}

TEST(Version, MatchesTheProject) { EXPECT_STREQ(flashmoe::version(), FLASHMOE_PROJECT_VERSION); }

}  // namespace
